"""The memory preflight against a real API server: with the test bed's GPU nodes labelled as H200s
(nvidia.com/gpu.memory=143771, MiB, as GPU feature discovery labels them), a job whose ranks cannot fit is Failed
with reason WillNotFit before any pod, naming the estimate's breakdown and the nearest change that fits; a job that
fits is accepted and runs, with the estimate in status.memoryEstimate."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from llmtrain_testbed.testing import Cluster

from .kube import Kube, OperatorProcess, job_manifest, running_operator

GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
H200_MIB = 143_771
ONE_GPU = {"requests": {"cpu": "10m", "memory": "32Mi", "nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 1}}


@pytest.fixture
def h200_nodes(cluster: Cluster) -> Iterator[list[str]]:
    """Every GPU node of the test bed labelled as an H200 for the test (the process kubelet already registers them
    so), each node's own label put back afterwards."""
    if not cluster.is_testbed:
        pytest.skip("relabels the cluster's GPU nodes; on a real cluster GPU feature discovery sets the label")
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    names = [
        node["metadata"]["name"]
        for node in nodes
        if int((node.get("status", {}).get("allocatable") or {}).get("nvidia.com/gpu", "0")) > 0
    ]
    assert names, "the test bed's nodes advertise nvidia.com/gpu"
    before = {node["metadata"]["name"]: node["metadata"].get("labels", {}).get(GPU_MEMORY_LABEL) for node in nodes}
    cluster.kubectl("label", "node", *names, f"{GPU_MEMORY_LABEL}={H200_MIB}", "--overwrite")
    try:
        yield names
    finally:
        for name in names:
            value = before.get(name)
            label = f"{GPU_MEMORY_LABEL}={value}" if value else f"{GPU_MEMORY_LABEL}-"
            cluster.kubectl("label", "node", name, label, "--overwrite", check=False)


@pytest.fixture
def operator(cluster: Cluster, namespace: str, crd: None, h200_nodes: list[str]) -> Iterator[OperatorProcess]:
    """Started after the labels: its node index is listed (labels included) before it handles any job."""
    with running_operator(cluster, namespace) as op:
        yield op


def test_a_job_that_cannot_fit_an_h200_is_failed_before_any_pod_with_a_suggestion(
    kube: Kube, operator: OperatorProcess
):
    # Llama-3-8B, one GPU per pod, 8 x 4096 tokens per micro-batch: about 294 GiB per rank, twice an H200.
    kube.create(
        job_manifest(
            "too-big",
            nodes=2,
            procsPerNode="auto",
            resources=ONE_GPU,
            precision="bf16",
            model={"preset": "llama-8b"},
            data={"seqLen": 4096},
            training={"steps": 10, "globalBatchSize": 16, "microBatchSize": 8},
        )
    )
    status = kube.wait_phase("too-big", "Failed", timeout=60)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "WillNotFit"
    assert "does not fit in 140.4 GiB" in failed["message"] and "estimate: peak" in failed["message"]
    assert "try training.microBatchSize 8 → " in failed["message"]
    assert status["memoryEstimate"]["gpuMemoryBytes"] == H200_MIB * 2**20
    assert status["memoryEstimate"]["peakBytes"] > H200_MIB * 2**20
    assert kube.pods("too-big") == [] and kube.get("configmap", "too-big-config") is None
    events = [(e["type"], e["reason"]) for e in kube.events("too-big")]
    assert ("Warning", "WillNotFit") in events


def test_a_job_that_fits_an_h200_is_accepted_with_its_estimate_in_status(kube: Kube, operator: OperatorProcess):
    kube.create(job_manifest("fits", nodes=2, resources=ONE_GPU))
    status = kube.wait_phase("fits", "Running", timeout=60)
    estimate = status["memoryEstimate"]
    assert estimate["gpuMemoryBytes"] == H200_MIB * 2**20 and estimate["summary"].startswith("peak ")
    assert len(kube.pods("fits")) == 2
    assert not [e for e in kube.events("fits") if e["reason"] in ("WillNotFit", "MayNotFit")]
