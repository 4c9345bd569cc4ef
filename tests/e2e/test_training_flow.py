"""The whole flow on one job: helm-installed operator → tiny FSDP job (2 nodes x 2 processes) → Succeeded,
with progress in status, checkpoints on the claim, and metrics in a real Prometheus."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from llmtrain_testbed.testing import Cluster, fresh_namespace

from .conftest import Prometheus
from .jobs import (
    checkpoint_claim,
    claim_directory,
    complete_checkpoints,
    create_job,
    rank0_log,
    tiny_job,
    wait_phase,
)

STEPS = 40


@dataclass
class FinishedRun:
    namespace: str
    name: str
    status: dict
    rank0_log: str
    checkpoint_dir: str | None
    loss_samples: list[float]
    operator_series: list[str]


@pytest.fixture(scope="module")
def finished_run(cluster: Cluster, operator: str, prometheus: Prometheus) -> FinishedRun:
    """Train once; the specifications below read what this run left behind."""
    with fresh_namespace(cluster, "e2e-happy-path") as ns:
        claim = checkpoint_claim(cluster, ns)
        create_job(cluster, ns, tiny_job("tiny", steps=STEPS, checkpoint_interval=10, claim=claim))
        status = wait_phase(cluster, ns, "tiny", "Succeeded", timeout=600)
        log = rank0_log(cluster, ns, "tiny")
        ckpt_dir = str(claim_directory(cluster, ns, claim)) if cluster.is_testbed else None
        series = prometheus.query(f'llmtrain_loss{{namespace="{ns}"}}[10m]')
        samples = [float(v) for s in series for _, v in s["values"]]
        operator_series = sorted(
            {r["metric"]["__name__"] for r in prometheus.query('{__name__=~"llmtrain_operator_.+"}')}
        )
        return FinishedRun(ns, "tiny", status, log, ckpt_dir, samples, operator_series)


def test_job_succeeds_with_progress_at_the_final_step(finished_run: FinishedRun) -> None:
    progress = finished_run.status["progress"]
    assert progress["step"] == progress["totalSteps"] == STEPS
    assert progress["lastCheckpointStep"] == STEPS
    assert finished_run.status["restarts"] == 0
    conditions = {c["type"]: c["status"] for c in finished_run.status["conditions"]}
    assert conditions["Succeeded"] == "True"
    assert finished_run.status["completionTime"]


def test_loss_falls_during_training(finished_run: FinishedRun) -> None:
    losses = [float(m) for m in re.findall(r"loss[=: ]+([0-9]+\.[0-9]+)", finished_run.rank0_log)]
    assert len(losses) >= 2, f"rank 0 logged no losses:\n{finished_run.rank0_log[-2000:]}"
    assert losses[-1] < losses[0]
    assert finished_run.status["progress"]["loss"] < losses[0]


def test_checkpoints_are_written_to_the_claim(finished_run: FinishedRun, cluster: Cluster) -> None:
    if not cluster.is_testbed:
        pytest.skip("reads the claim's hostPath directory on this machine")
    from pathlib import Path

    names = complete_checkpoints(Path(finished_run.checkpoint_dir))
    assert names, f"no complete checkpoint under {finished_run.checkpoint_dir}"
    assert any(n.endswith(f"{STEPS:08d}") for n in names), names


def test_prometheus_scrapes_a_falling_training_loss(finished_run: FinishedRun) -> None:
    samples = finished_run.loss_samples
    assert len(samples) >= 3, f"Prometheus holds {len(samples)} llmtrain_loss samples"
    assert min(samples[len(samples) // 2 :]) < max(samples[: len(samples) // 2])


def test_prometheus_scrapes_the_operator_metrics(finished_run: FinishedRun) -> None:
    assert "llmtrain_operator_reconcile_duration_seconds_count" in finished_run.operator_series or any(
        s.startswith("llmtrain_operator_reconcile") for s in finished_run.operator_series
    ), finished_run.operator_series
    assert any(s.startswith("llmtrain_operator_jobs") for s in finished_run.operator_series)
