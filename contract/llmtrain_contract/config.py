"""TrainerConfig: the JSON the operator renders into the job's ConfigMap and the trainer validates before torch.

It is the spec's sections (from `sections`, shared with the API) plus what the operator resolves for one job:
its name and its checkpoint directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field, ValidationError, model_validator

from .errors import ConfigError
from .rules import warmup_problem
from .sections import (
    CheckpointPolicy,
    DataSection,
    EvaluationSection,
    LoggingSection,
    MetricsSection,
    ModelSection,
    OptimizerSection,
    ParallelismSection,
    Precision,
    ScheduleSection,
    Section,
    TrainingSection,
)


class CheckpointConfig(CheckpointPolicy):
    dir: str | None = Field(None, description="Directory for checkpoints; none disables them.")

    @model_validator(mode="after")
    def _export_needs_dir(self) -> CheckpointConfig:
        if self.export != "none" and not self.dir:
            raise ValueError("checkpoint.export: writes under checkpoint.dir, which is not set")
        return self


class TrainerConfig(Section):
    """Everything one training run needs; the operator writes it, the trainer reads it."""

    job_name: str = Field("local", description="Job name, used as a metrics label and in logs.")
    model: ModelSection
    data: DataSection = DataSection()
    parallelism: ParallelismSection = ParallelismSection()
    precision: Precision = "bf16"
    optimizer: OptimizerSection = OptimizerSection()
    schedule: ScheduleSection = ScheduleSection()
    training: TrainingSection
    checkpoint: CheckpointConfig = CheckpointConfig()
    metrics: MetricsSection = MetricsSection()
    logging: LoggingSection = LoggingSection()
    evaluation: EvaluationSection | None = None

    @model_validator(mode="after")
    def _schedule_fits(self) -> TrainerConfig:
        problem = warmup_problem(self.schedule.warmup_steps, self.training.steps)
        if problem:
            raise ValueError(f"{problem[0]}: {problem[1]}")
        return self

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True, indent=2)


def load_config(path: str | Path) -> TrainerConfig:
    """Read and validate a config file; raise ConfigError with one line naming the field."""
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {path}") from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file {path} is not JSON: {e}") from e
    try:
        return TrainerConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from e


def format_validation_error(e: ValidationError) -> str:
    """One line per problem, each naming the dotted field path the user wrote."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
