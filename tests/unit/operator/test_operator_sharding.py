"""An unset spec.parallelism.sharding is the operator's choice at admission: zero2 (no re-all-gather of parameters
in backward: faster) when the job's GPU nodes declare their memory and the zero2 estimate fits it with the
estimator's 15% margin, else zero3. The choice is in status.sharding and in the trainer config the pods read, and
once the job's first pods exist it never changes. A value the spec sets is kept; ddp and custom jobs have none."""

from __future__ import annotations

import json
from typing import Any

from llmtrain_operator.api import LLMTrainingJobSpec
from llmtrain_operator.builders import build_config_map
from llmtrain_operator.memory_preflight import job_estimate
from llmtrain_operator.reconcile import Decision, Observed, reconcile
from reconcile_inputs import NOW, SETTINGS, SPEC, cond, job, kinds, pod, reasons

MIB, GIB = 2**20, 2**30
H200 = 143_771 * MIB
ONE_GPU = {"limits": {"nvidia.com/gpu": 1}}
TINY_ON_A_GPU: dict[str, Any] = {"resources": ONE_GPU}
# Llama-3-8B on 2 pods x 1 GPU, 8 x 4096 tokens, selective checkpointing: zero2 needs ~136 GiB per rank (under the
# H200's 140.4 GiB, but not with the 15% margin: 157 GiB), zero3 ~124 GiB.
LLAMA_8B_TIGHT: dict[str, Any] = {
    "procsPerNode": "auto",
    "resources": ONE_GPU,
    "model": {"preset": "llama-8b"},
    "data": {"seqLen": 4096},
    "training": {"steps": 10, "globalBatchSize": 16, "microBatchSize": 8, "activationCheckpointing": "selective"},
}
# The same without activation checkpointing: ~230 GiB per rank even with zero3.
LLAMA_8B_TOO_BIG: dict[str, Any] = {
    **LLAMA_8B_TIGHT,
    "training": {"steps": 10, "globalBatchSize": 16, "microBatchSize": 8},
}


def on_h200(**fields: Any) -> Observed:
    return Observed(gpu_memory_bytes=H200, **fields)


def trainer_sharding(decision: Decision) -> str | None:
    """parallelism.sharding in the trainer config the decision creates (None: left out, the trainer's zero3)."""
    [config_map] = [m for m in decision.creates if m["kind"] == "ConfigMap"]
    return json.loads(config_map["data"]["config.json"])["parallelism"].get("sharding")


def estimate_with(fields: dict[str, Any], sharding: str) -> int:
    raw = {**SPEC, **fields, "parallelism": {"sharding": sharding}}
    return job_estimate(LLMTrainingJobSpec.model_validate(raw)).total


def rendered(fields: dict[str, Any], sharding: str) -> dict[str, str]:
    """The trainer config data a job with `fields` gets when its sharding is `sharding`."""
    spec = LLMTrainingJobSpec.model_validate({**SPEC, **fields, "parallelism": {"sharding": sharding}})
    return build_config_map(job().ref, spec)["data"]


# ----- admission: the choice -----------------------------------------------------------------------------------------


def test_a_small_model_on_h200_nodes_gets_zero2_in_status_and_in_the_trainer_config():
    d = reconcile(job(**TINY_ON_A_GPU), on_h200(), NOW, SETTINGS)
    assert d.status["phase"] == "Pending" and kinds(d) == ["ConfigMap", "Service", "Pod", "Pod"]
    assert d.status["sharding"] == "zero2" and trainer_sharding(d) == "zero2"
    assert d.status["memoryEstimate"]["peakBytes"] == estimate_with(TINY_ON_A_GPU, "zero2")  # the estimate it runs


def test_a_model_whose_zero2_estimate_fits_only_without_the_margin_gets_zero3():
    zero2, zero3 = estimate_with(LLAMA_8B_TIGHT, "zero2"), estimate_with(LLAMA_8B_TIGHT, "zero3")
    assert zero3 < zero2 < H200 < zero2 * 1.15  # the numbers this test is about
    d = reconcile(job(**LLAMA_8B_TIGHT), on_h200(), NOW, SETTINGS)
    assert d.status["phase"] == "Pending" and kinds(d).count("Pod") == 2 and d.events == []
    assert d.status["sharding"] == "zero3" and trainer_sharding(d) == "zero3"
    assert d.status["memoryEstimate"]["peakBytes"] == zero3


def test_a_job_that_does_not_fit_even_with_zero3_fails_will_not_fit_as_before():
    d = reconcile(job(**LLAMA_8B_TOO_BIG), on_h200(), NOW, SETTINGS)
    assert d.status["phase"] == "Failed" and cond(d, "Failed")["reason"] == "WillNotFit" and d.creates == []
    assert "try training.microBatchSize 8 → " in cond(d, "Failed")["message"]  # the nearest change, from zero3
    assert d.status["sharding"] == "zero3"
    assert d.status["memoryEstimate"]["peakBytes"] == estimate_with(LLAMA_8B_TOO_BIG, "zero3")


def test_without_a_node_that_declares_its_gpu_memory_the_choice_is_zero3():
    d = reconcile(job(**TINY_ON_A_GPU), Observed(), NOW, SETTINGS)
    assert d.status["sharding"] == "zero3" and trainer_sharding(d) == "zero3"


def test_a_cpu_job_gets_zero3():
    d = reconcile(job(), on_h200(), NOW, SETTINGS)  # SPEC requests no GPU: nothing to fit against
    assert d.status["sharding"] == "zero3" and trainer_sharding(d) == "zero3"


def test_a_ddp_job_has_no_sharding_to_choose():
    d = reconcile(job(parallelism={"dataParallel": "ddp"}, **TINY_ON_A_GPU), on_h200(), NOW, SETTINGS)
    assert "sharding" not in d.status and trainer_sharding(d) is None  # the trainer ignores it for ddp


def test_a_custom_trainer_job_has_no_sharding():
    custom = {"nodes": 2, "procsPerNode": 1, "trainer": {"command": ["python", "train.py"]}, "resources": ONE_GPU}
    view = job(**custom)
    for builtin in ("model", "training"):  # SPEC's built-in sections are not allowed beside trainer
        view.spec.pop(builtin)
    d = reconcile(view, on_h200(), NOW, SETTINGS)
    assert d.status["phase"] == "Pending" and "sharding" not in d.status


def test_a_sharding_the_spec_sets_is_kept_and_recorded():
    for sharding in ("zero3", "hybrid"):
        d = reconcile(job(parallelism={"sharding": sharding}, **TINY_ON_A_GPU), on_h200(), NOW, SETTINGS)
        assert d.status["sharding"] == sharding and trainer_sharding(d) == sharding
    tight = reconcile(job(parallelism={"sharding": "zero2"}, **LLAMA_8B_TIGHT), on_h200(), NOW, SETTINGS)
    assert tight.status["sharding"] == "zero2" and trainer_sharding(tight) == "zero2"  # the user's call, not ours


def test_the_created_condition_names_the_sharding():
    first = reconcile(job(**TINY_ON_A_GPU), on_h200(), NOW, SETTINGS)
    pending = (pod(0, "Pending"), pod(1, "Pending"))
    d = reconcile(job(status=first.status, **TINY_ON_A_GPU), on_h200(pods=pending), NOW, SETTINGS)
    assert "FSDP sharding zero2" in cond(d, "Created")["message"]


# ----- pinned from the first pods on ---------------------------------------------------------------------------------


def test_the_choice_is_pinned_once_pods_exist_even_when_the_nodes_gpu_memory_shrinks():
    first = reconcile(job(**TINY_ON_A_GPU), on_h200(), NOW, SETTINGS)
    assert first.status["sharding"] == "zero2"
    smaller = Observed(gpu_memory_bytes=1 * MIB, pods=(pod(0), pod(1)), config_map=True, service=True)
    running = reconcile(job(status=first.status, **TINY_ON_A_GPU), smaller, NOW, SETTINGS)
    assert running.status["phase"] == "Running" and running.status["sharding"] == "zero2"
    # between attempts (no pods; the config is read again before the next pods): still zero2, nothing re-rendered
    restarting = {**running.status, "phase": "Restarting", "attempt": 1}
    config = rendered(TINY_ON_A_GPU, "zero2")
    between = Observed(gpu_memory_bytes=1 * MIB, config_map=True, service=True, config=config)
    d = reconcile(job(status=restarting, **TINY_ON_A_GPU), between, NOW, SETTINGS)
    assert d.status["sharding"] == "zero2" and d.updates == [] and kinds(d) == ["Pod", "Pod"]
    assert ("Normal", "ConfigUpdated") not in reasons(d)


def test_a_job_started_before_the_operator_chose_keeps_zero3():
    started = {"phase": "Running", "nodes": 2, "procsPerNode": 1, "startTime": "2026-01-01T11:55:00Z"}
    d = reconcile(job(status=started, **TINY_ON_A_GPU), on_h200(pods=(pod(0), pod(1))), NOW, SETTINGS)
    assert d.status["sharding"] == "zero3"
    # its next attempt re-renders nothing: the config it started with says zero3
    restarting = {**started, "phase": "Restarting", "attempt": 1}
    between = on_h200(config_map=True, service=True, config=rendered(TINY_ON_A_GPU, "zero3"))
    d = reconcile(job(status=restarting, **TINY_ON_A_GPU), between, NOW, SETTINGS)
    assert d.status["sharding"] == "zero3" and d.updates == [] and kinds(d) == ["Pod", "Pod"]


def test_before_its_first_pods_a_suspended_job_follows_the_nodes_it_may_land_on():
    """Nothing has run yet, so nothing depends on the choice: it is made again, with the memory preflight, until
    the pods are created (and the config is re-rendered for them if it changed)."""
    suspended = {"runPolicy": {"suspend": True}, **LLAMA_8B_TIGHT}
    roomy = Observed(gpu_memory_bytes=2 * H200)
    first = reconcile(job(**suspended), roomy, NOW, SETTINGS)
    assert first.status["phase"] == "Suspended" and first.status["sharding"] == "zero2"
    again = reconcile(job(status=first.status, **suspended), on_h200(config_map=True, service=True), NOW, SETTINGS)
    assert again.status["sharding"] == "zero3"
    resumed = on_h200(config_map=True, service=True, config=rendered(LLAMA_8B_TIGHT, "zero2"))
    d = reconcile(job(status=again.status, **LLAMA_8B_TIGHT), resumed, NOW, SETTINGS)
    assert d.status["sharding"] == "zero3" and kinds(d) == ["Pod", "Pod"]
    [update] = d.updates
    assert update["data"] == rendered(LLAMA_8B_TIGHT, "zero3")  # merge-patched before the pods are created
