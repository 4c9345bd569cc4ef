"""terminationGracePeriodSeconds: long enough for the trainer's save on SIGTERM, derived from the model's size."""

from __future__ import annotations

from typing import Any

import pytest
from llmtrain_operator.api import LLMTrainingJobSpec
from llmtrain_operator.builders import JobRef, build_pod
from llmtrain_operator.grace import BASE_GRACE_SECONDS, default_grace_seconds, parameter_count


def spec(preset: str = "llama-8b", checkpoint: dict[str, Any] | None = None, **fields: Any) -> LLMTrainingJobSpec:
    raw = {
        "nodes": 2,
        "procsPerNode": 1,
        "model": {"preset": preset},
        "training": {"steps": 10, "globalBatchSize": 2},
        "checkpoint": {"claimName": "ckpt", **(checkpoint or {})},
        **fields,
    }
    return LLMTrainingJobSpec.model_validate(raw)


@pytest.mark.parametrize(
    ("preset", "params"),
    [("llama-1b", 1_100_048_384), ("llama-8b", 8_030_261_248)],  # TinyLlama 1.1B's and Llama 3 8B's published counts
)
def test_the_parameter_count_is_the_resolved_shape_s(preset, params):
    assert parameter_count(spec(preset)) == params


def test_explicit_dimensions_change_the_count():
    assert parameter_count(spec(model={"preset": "llama-1b", "layers": 44})) > parameter_count(spec("llama-1b"))


@pytest.mark.parametrize(("preset", "grace"), [("tiny", 61), ("gpt2-124m", 68), ("llama-1b", 127), ("llama-8b", 542)])
def test_the_default_grace_covers_writing_the_checkpoint(preset, grace):
    # 60 s, plus 12 bytes per parameter at 200 MB/s: Llama 3 8B's 96 GB checkpoint needs 8 minutes
    assert default_grace_seconds(spec(preset)) == grace


def test_without_a_save_on_sigterm_the_grace_is_the_base():
    assert default_grace_seconds(spec(checkpoint={"saveOnSigterm": False})) == BASE_GRACE_SECONDS
    no_checkpoint = LLMTrainingJobSpec.model_validate(
        {"model": {"preset": "llama-8b"}, "training": {"steps": 1, "globalBatchSize": 1}}
    )
    assert default_grace_seconds(no_checkpoint) == BASE_GRACE_SECONDS


def test_node_pods_get_the_derived_grace_unless_the_run_policy_sets_one():
    job = JobRef("demo", "ns", "uid")
    assert build_pod(job, spec("llama-8b"), 0, 0, "img")["spec"]["terminationGracePeriodSeconds"] == 542
    explicit = spec("llama-8b", runPolicy={"terminationGracePeriodSeconds": 900})
    assert build_pod(job, explicit, 0, 0, "img")["spec"]["terminationGracePeriodSeconds"] == 900
