"""Admission-time memory check: refuse a job that cannot fit its GPUs, naming the nearest fix."""

from __future__ import annotations

from typing import Any

from llmtrain_operator.api import LLMTrainingJobSpec
from llmtrain_operator.memory_preflight import job_estimate, memory_errors, memory_warning

GIB = 2**30
H100 = 81_559 * 2**20


def spec(**overrides: Any) -> LLMTrainingJobSpec:
    raw = {
        "nodes": 1,
        "procsPerNode": 8,
        "model": {"preset": "llama-8b"},
        "data": {"seqLen": 8192},
        "training": {"steps": 10, "globalBatchSize": 32, "microBatchSize": 4, "activationCheckpointing": "full"},
        **overrides,
    }
    return LLMTrainingJobSpec.model_validate(raw)


def test_a_job_that_fits_has_no_memory_error():
    small = spec(model={"preset": "llama-1b"}, data={"seqLen": 2048})
    assert memory_errors(small, H100) == [] and memory_warning(small, H100) is None


def test_a_job_that_cannot_fit_is_refused_with_the_field_to_change():
    errors = memory_errors(spec(), 24 * GIB)  # the job needs about 33 GiB per rank
    assert len(errors) == 1
    assert errors[0].field.startswith("spec.")
    assert "will not fit the GPU" in errors[0].message and "largest:" in errors[0].message


def test_a_job_just_over_the_budget_only_warns():
    est = job_estimate(spec())
    budget = int(est.total * 0.95)
    assert memory_errors(spec(), budget) == []
    assert memory_warning(spec(), budget).startswith("may not fit the GPU")


def test_estimator_sees_the_specs_layout():
    training = {"steps": 10, "globalBatchSize": 64, "microBatchSize": 4, "activationCheckpointing": "full"}
    est = job_estimate(spec(nodes=2, training=training))
    assert est.optimizer_state * 2 == job_estimate(spec()).optimizer_state  # zero3 over 16 ranks, not 8
