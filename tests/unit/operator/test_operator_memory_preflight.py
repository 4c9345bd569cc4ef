"""Admission-time memory check: refuse a job that cannot fit its GPUs, naming the nearest fix; choose zero2 for a job
that leaves its sharding unset only where zero2 fits with the estimator's margin."""

from __future__ import annotations

import math
from typing import Any

from llmtrain_operator.api import LLMTrainingJobSpec
from llmtrain_operator.memory_preflight import (
    TOLERANCE,
    choose_sharding,
    job_estimate,
    memory_errors,
    memory_warning,
)

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


# ----- choosing an unset sharding: zero2 only where it fits with the estimator's margin ---------------------------

EIGHT_GPUS = {"limits": {"nvidia.com/gpu": 8}}


def gpu_spec(**overrides: Any) -> LLMTrainingJobSpec:
    """spec() on 8 GPUs per pod, with parallelism.sharding left unset."""
    return spec(resources=EIGHT_GPUS, **overrides)


def zero2_peak(job: LLMTrainingJobSpec) -> int:
    zero2 = job.model_copy(update={"parallelism": job.parallelism.with_sharding("zero2")})
    return job_estimate(zero2).total


def test_zero2_is_chosen_when_its_estimate_plus_the_margin_fits_the_gpu():
    job = gpu_spec()
    need = math.ceil(zero2_peak(job) * (1 + TOLERANCE))
    assert choose_sharding(job, need) == "zero2"
    assert choose_sharding(job, need - 1) == "zero3"  # fits bare, not with the margin: zero3
    assert zero2_peak(job) < need - 1


def test_zero2_needs_more_memory_than_zero3_so_the_choice_is_zero3_between_the_two():
    job = gpu_spec()
    zero3 = job_estimate(job.model_copy(update={"parallelism": job.parallelism.with_sharding("zero3")})).total
    assert zero3 < zero2_peak(job)
    assert choose_sharding(job, int(zero3 * (1 + TOLERANCE))) == "zero3"


def test_zero3_whenever_the_estimate_cannot_be_trusted_against_a_gpu():
    assert choose_sharding(gpu_spec(), None) == "zero3"  # no node declares its GPU memory
    assert choose_sharding(spec(), 10 * H100) == "zero3"  # a CPU job: no GPU to fit
    from_hf = gpu_spec(model={"init": "/models/llama"})  # the shape is in a config.json on a volume
    assert choose_sharding(from_hf, 10 * H100) == "zero3"
    unknown_vocab = gpu_spec(
        model={"dim": 512, "layers": 4, "heads": 8},
        data={"source": "/data/corpus.txt", "tokenizer": "hf:/data/tokenizer.json"},
    )
    assert job_estimate(unknown_vocab).lower_bound  # an estimate that may be far low
    assert choose_sharding(unknown_vocab, 10 * H100) == "zero3"


def test_a_ddp_job_has_no_fsdp_sharding_to_choose():
    assert choose_sharding(gpu_spec(parallelism={"dataParallel": "ddp"}), 10 * H100) == "zero3"
