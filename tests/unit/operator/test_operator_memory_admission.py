"""The memory preflight at admission: a job whose ranks cannot fit the GPUs of the nodes it may land on is Failed
(WillNotFit) before any pod, with the estimate's breakdown and the nearest change that fits; the estimate is in
status. The nodes' GPU memory is the `nvidia.com/gpu.memory` label (MiB) GPU feature discovery sets."""

from __future__ import annotations

from typing import Any

from llmtrain_operator.gpu_nodes import GpuNode, gpu_memory_bytes, gpu_node
from llmtrain_operator.memory_preflight import job_estimate
from llmtrain_operator.reconcile import Observed, reconcile
from llmtrain_operator.validate import parse_spec
from reconcile_inputs import NOW, SETTINGS, cond, job, kinds, pod, reasons, seen

MIB = 2**20
H200 = 143_771 * MIB
ONE_GPU = {"limits": {"nvidia.com/gpu": 1}}
# Llama-3-8B on one GPU per pod, 8 x 4096 tokens per micro-batch: ~230 GiB per rank, over 1.5 H200s.
LLAMA_8B: dict[str, Any] = {
    "procsPerNode": "auto",
    "resources": ONE_GPU,
    "model": {"preset": "llama-8b"},
    "data": {"seqLen": 4096},
    "training": {"steps": 10, "globalBatchSize": 16, "microBatchSize": 8},
}
TINY_ON_A_GPU: dict[str, Any] = {"resources": ONE_GPU}


def on_h200(**fields: Any) -> Observed:
    return Observed(gpu_memory_bytes=H200, **fields)


def test_a_job_that_cannot_fit_an_h200_fails_before_any_pod_with_the_breakdown_and_a_suggestion():
    d = reconcile(job(**LLAMA_8B), on_h200(), NOW, SETTINGS)
    assert d.status["phase"] == "Failed" and d.creates == []
    failed = cond(d, "Failed")
    assert failed["reason"] == "WillNotFit"
    assert "does not fit in 140.4 GiB" in failed["message"]
    assert "try training.microBatchSize 8 → " in failed["message"]  # the nearest change that fits
    assert "estimate: peak 229." in failed["message"] and "acts " in failed["message"]  # the breakdown
    assert reasons(d) == [("Warning", "WillNotFit")] and d.events[0].message == failed["message"]
    estimate = d.status["memoryEstimate"]
    assert estimate["gpuMemoryBytes"] == H200 and estimate["peakBytes"] > 1.5 * H200


def test_a_job_that_fits_is_accepted_with_its_estimate_in_status():
    d = reconcile(job(**TINY_ON_A_GPU), on_h200(), NOW, SETTINGS)
    assert d.status["phase"] == "Pending" and kinds(d) == ["ConfigMap", "Service", "Pod", "Pod"]
    estimate = d.status["memoryEstimate"]
    assert estimate["summary"].startswith("peak ") and estimate["gpuMemoryBytes"] == H200
    assert 0 < estimate["peakBytes"] < H200
    assert d.events == []


def test_without_a_node_that_declares_its_gpu_memory_nothing_is_checked_but_the_estimate_is_in_status():
    d = reconcile(job(**LLAMA_8B), Observed(), NOW, SETTINGS)
    assert d.status["phase"] == "Pending" and kinds(d).count("Pod") == 2
    assert "gpuMemoryBytes" not in d.status["memoryEstimate"] and d.status["memoryEstimate"]["peakBytes"] > 0


def test_a_cpu_job_gets_no_gpu_memory_estimate():
    d = reconcile(job(), on_h200(), NOW, SETTINGS)
    assert "memoryEstimate" not in d.status and kinds(d).count("Pod") == 2


def test_a_job_whose_pods_were_created_is_never_failed_by_a_node_label_that_changed_later():
    running = {"phase": "Running", "nodes": 2, "procsPerNode": 1, "startTime": "2026-01-01T11:55:00Z"}
    d = reconcile(job(status=running, **LLAMA_8B), on_h200(pods=seen(pod(0), pod(1)).pods), NOW, SETTINGS)
    assert d.status["phase"] == "Running" and "memoryEstimate" not in d.status
    restarting = {**running, "phase": "Restarting", "attempt": 1}  # between attempts: no pods, still admitted
    d = reconcile(job(status=restarting, **LLAMA_8B), on_h200(config_map=True, service=True), NOW, SETTINGS)
    assert d.status["phase"] != "Failed" and kinds(d).count("Pod") == 2


def test_a_job_that_may_not_fit_gets_one_warning_while_it_waits_for_admission():
    spec, _ = parse_spec(job(**LLAMA_8B).spec)
    assert spec is not None
    budget = int(job_estimate(spec).total * 0.95)  # over the budget, but within the estimator's 15%
    suspended = job(runPolicy={"suspend": True}, **LLAMA_8B)  # Kueue creates jobs suspended: no pods yet
    first = reconcile(suspended, Observed(gpu_memory_bytes=budget), NOW, SETTINGS)
    assert first.status["phase"] == "Suspended" and ("Warning", "MayNotFit") in reasons(first)
    assert "may not fit the GPU" in next(e.message for e in first.events if e.reason == "MayNotFit")
    again = reconcile(job(status=first.status, runPolicy={"suspend": True}, **LLAMA_8B), seen(), NOW, SETTINGS)
    assert ("Warning", "MayNotFit") not in reasons(again)


# ----- which GPU memory the job's pods would get -------------------------------------------------------------------


def node(name: str, gpus: int | None = 8, memory: str | None = "143771", **labels: str) -> dict[str, Any]:
    if memory is not None:
        labels["nvidia.com/gpu.memory"] = memory
    status = {"allocatable": {"cpu": "64", **({"nvidia.com/gpu": str(gpus)} if gpus is not None else {})}}
    return {"kind": "Node", "metadata": {"name": name, "labels": labels}, "status": status}


def test_a_node_view_holds_its_labels_allocatable_gpus_and_gpu_memory():
    assert gpu_node(node("a", pool="h200")) == GpuNode(
        "a", {"pool": "h200", "nvidia.com/gpu.memory": "143771"}, gpus=8, memory_mib=143771
    )
    assert gpu_node(node("cpu", gpus=None)) is None and gpu_node(node("drained", gpus=0)) is None
    assert gpu_node(node("odd", memory="lots")).memory_mib is None  # type: ignore[union-attr]
    capacity_only = {"metadata": {"name": "c"}, "status": {"capacity": {"nvidia.com/gpu": "4"}}}
    assert gpu_node(capacity_only) == GpuNode("c", {}, gpus=4, memory_mib=None)


def test_the_job_gets_the_smallest_gpu_memory_among_the_gpu_nodes_its_node_selector_matches():
    nodes = [
        GpuNode("h200", {"pool": "train"}, 8, 143_771),
        GpuNode("h100", {"pool": "train"}, 8, 81_559),
        GpuNode("a100", {"pool": "dev"}, 8, 40_960),
        GpuNode("unlabelled", {"pool": "train"}, 8, None),
    ]
    assert gpu_memory_bytes(nodes, {}) == 40_960 * MIB
    assert gpu_memory_bytes(nodes, {"pool": "train"}) == 81_559 * MIB
    assert gpu_memory_bytes(nodes, {"pool": "other"}) is None
    assert gpu_memory_bytes(nodes[3:], {}) is None  # no node declares it: no preflight
