"""Render one job's TrainerConfig: the spec's shared sections (llmtrain_contract) plus what the operator resolves.

The sections are the same pydantic classes on both sides, so the trainer reads exactly what the API accepted.
"""

from __future__ import annotations

from llmtrain_contract.config import CheckpointConfig, TrainerConfig

from .api import LLMTrainingJobSpec
from .constants import CHECKPOINT_DIR


def render_trainer_config(job_name: str, spec: LLMTrainingJobSpec) -> TrainerConfig:
    """The job's config; checkpoints go to one directory per job name, so jobs can share a claim and a job
    re-created under the same name resumes where the old one stopped."""
    if spec.model is None or spec.training is None:
        raise ValueError("a job with spec.trainer has no TrainerConfig")
    checkpoint = CheckpointConfig()
    if spec.checkpoint is not None:
        policy = spec.checkpoint.model_dump(include=set(CheckpointConfig.model_fields) - {"dir"})
        checkpoint = CheckpointConfig(dir=f"{CHECKPOINT_DIR}/{job_name}", **policy)
    return TrainerConfig(
        job_name=job_name,
        model=spec.model,
        data=spec.data,
        parallelism=spec.parallelism,
        precision=spec.precision,
        optimizer=spec.optimizer,
        schedule=spec.schedule,
        training=spec.training,
        checkpoint=checkpoint,
        metrics=spec.metrics,
        logging=spec.logging,
        evaluation=spec.evaluation,
    )
