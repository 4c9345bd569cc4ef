"""TrainerConfig: the contract between the operator and the trainer.

The operator renders this model as JSON into the job's ConfigMap; the trainer validates it before it touches
torch. Keys are camelCase, like the LLMTrainingJob spec they come from, and unknown keys are rejected so a typo
fails loudly instead of silently training the wrong thing. This module must not import torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

PresetName = Literal["tiny", "gpt2-124m", "llama-1b", "llama-8b"]


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class ModelConfig(_Model):
    """Transformer shape: a preset, optionally with explicit dimensions overriding it."""

    preset: PresetName | None = Field(None, description="Named shape; explicit fields below override it.")
    dim: int | None = Field(None, ge=8, description="Hidden size.")
    n_layers: int | None = Field(None, ge=1, alias="layers", description="Number of transformer blocks.")
    n_heads: int | None = Field(None, ge=1, alias="heads", description="Attention heads.")
    n_kv_heads: int | None = Field(None, ge=1, alias="kvHeads", description="Key/value heads (GQA); = heads if unset.")
    ffn_dim: int | None = Field(None, ge=8, description="SwiGLU hidden size.")
    vocab_size: int | None = Field(None, ge=2, description="Vocabulary size (the tokenizer's when unset).")
    max_seq_len: int | None = Field(None, ge=1, description="Longest sequence RoPE is built for.")
    tie_embeddings: bool | None = Field(None, description="Share the input embedding and output projection.")

    @model_validator(mode="after")
    def _preset_or_dims(self) -> ModelConfig:
        if self.preset is None:
            missing = [n for n in ("dim", "n_layers", "n_heads") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"model: set a preset or give {', '.join(missing)}")
        return self


class DataConfig(_Model):
    source: str = Field("synthetic", description="'synthetic', or a path to a .txt file or a pre-tokenised .bin.")
    tokenizer: str = Field("byte", description="'byte', 'tiktoken:<encoding>' or 'hf:<local tokenizer.json path>'.")
    seq_len: int = Field(256, ge=2, description="Tokens per training sequence.")
    bin_dtype: Literal["uint16", "uint32"] = Field("uint16", description="Element type of a .bin token file.")


class ParallelismConfig(_Model):
    data_parallel: Literal["ddp", "fsdp"] = Field("fsdp", description="Data-parallel strategy.")
    sharding: Literal["zero2", "zero3", "hybrid"] = Field("zero3", description="FSDP sharding (ignored for ddp).")
    tensor_parallel: int = Field(1, ge=1, description="Tensor-parallel degree (within a node).")
    loss_parallel: bool = Field(
        True, description="With tensorParallel > 1, compute the loss on vocabulary-sharded logits (no gather)."
    )


class OptimizerConfig(_Model):
    lr: float = Field(3e-4, gt=0, description="Peak learning rate.")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas.")
    weight_decay: float = Field(0.1, ge=0, description="Decoupled weight decay (not applied to norms/embeddings).")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")


class ScheduleConfig(_Model):
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps.")
    decay: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warmup.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final LR as a fraction of the peak.")


class TrainingConfig(_Model):
    steps: int = Field(ge=1, description="Optimizer steps to run.")
    global_batch_size: int = Field(ge=1, description="Sequences per optimizer step, across all ranks.")
    micro_batch_size: int = Field(1, ge=1, description="Sequences per rank per forward pass.")
    grad_clip: float = Field(1.0, ge=0, description="Max global grad norm (0 disables clipping).")
    activation_checkpointing: Literal["none", "full", "selective"] = Field("none", description="Recompute policy.")
    compile: bool = Field(False, description="torch.compile each block.")
    seed: int = Field(0, description="Seed for init, data order and dropout.")
    divergence_patience: int = Field(
        5, ge=1, description="Consecutive steps with a non-finite loss after which the run has diverged (exit 79)."
    )


class CheckpointConfig(_Model):
    dir: str | None = Field(None, description="Directory for checkpoints; none disables them.")
    interval: int = Field(100, ge=1, description="Save every this many steps (and at the end).")
    keep: int = Field(3, ge=1, description="Keep the newest this many complete checkpoints.")
    async_save: bool = Field(False, description="Save in the background (torch.distributed.checkpoint.async_save).")
    save_on_sigterm: bool = Field(True, description="Save when SIGTERM arrives (pod deletion, preemption).")


class MetricsConfig(_Model):
    port: int = Field(9090, ge=0, le=65535, description="Prometheus port (0 disables the endpoint).")
    peak_flops: float | None = Field(
        None, gt=0, description="Peak FLOP/s per device for MFU; from a GPU table if unset."
    )


class LoggingConfig(_Model):
    interval: int = Field(10, ge=1, description="Rank 0 logs every this many steps.")
    json_lines: bool = Field(False, alias="json", description="Log JSON lines instead of text.")


class TrainerConfig(_Model):
    """Everything one training run needs; the operator writes it, the trainer reads it."""

    job_name: str = Field("local", description="Job name, used as a metrics label and in logs.")
    model: ModelConfig
    data: DataConfig = DataConfig()
    parallelism: ParallelismConfig = ParallelismConfig()
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    training: TrainingConfig
    checkpoint: CheckpointConfig = CheckpointConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _schedule_fits(self) -> TrainerConfig:
        if self.schedule.warmup_steps >= self.training.steps and self.schedule.warmup_steps > 0:
            raise ValueError("schedule.warmupSteps must be smaller than training.steps")
        return self

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True, indent=2)


class ConfigError(ValueError):
    """A config that can never work: the trainer exits with EXIT_BAD_CONFIG and the operator does not retry."""


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
