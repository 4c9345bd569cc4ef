"""Render the trainer's config (the TrainerConfig JSON contract in trainer_image/llmtrain_trainer/config.py).

The operator image does not contain the trainer package, so this is the one place that knows the contract's keys;
tests/unit/operator/test_trainer_contract.py validates the output with the real TrainerConfig.
"""

from __future__ import annotations

from typing import Any

from .api import LLMTrainingJobSpec
from .constants import CHECKPOINT_DIR


def render_trainer_config(job_name: str, spec: LLMTrainingJobSpec) -> dict[str, Any]:
    """camelCase dict, None values dropped (the trainer fills its own defaults for those)."""

    def dump(section: Any) -> dict[str, Any]:
        return section.model_dump(by_alias=True, exclude_none=True)

    checkpoint: dict[str, Any] = {}
    if spec.checkpoint is not None:
        checkpoint = {
            # One directory per job name: jobs can share a claim, and a job re-created under the same name
            # resumes where the old one stopped.
            "dir": f"{CHECKPOINT_DIR}/{job_name}",
            "interval": spec.checkpoint.interval,
            "keep": spec.checkpoint.keep,
            "asyncSave": spec.checkpoint.async_save,
        }
    return {
        "jobName": job_name,
        "model": dump(spec.model),
        "data": dump(spec.data),
        "parallelism": dump(spec.parallelism),
        "precision": spec.precision,
        "optimizer": dump(spec.optimizer),
        "schedule": dump(spec.schedule),
        "training": dump(spec.training),
        "checkpoint": checkpoint,
        "metrics": dump(spec.metrics),
        "logging": dump(spec.logging),
    }
