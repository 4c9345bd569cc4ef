"""A live run serves its Prometheus metrics; SIGTERM saves a checkpoint and exits 143 (transient)."""

from __future__ import annotations

import json
import math
import signal
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from trainer_runs import BASE_CONFIG, GLOBAL_BATCH, SEQ_LEN, free_port, merged, start_trainer, write_config

JOB = "metrics-job"
TOTAL_STEPS = 100_000  # never reached: the test stops the run with SIGTERM
PEAK_FLOPS = 1e11  # a CPU has no table entry; an override makes MFU reportable

EXPECTED_NAMES = {
    "llmtrain_step",
    "llmtrain_total_steps",
    "llmtrain_loss",
    "llmtrain_tokens",  # counter family; exposed as llmtrain_tokens_total
    "llmtrain_tokens_per_second",
    "llmtrain_mfu",
    "llmtrain_step_seconds",
    "llmtrain_grad_norm",
    "llmtrain_learning_rate",
    "llmtrain_loss_scale",
    "llmtrain_skipped_steps",
    "llmtrain_gpu_memory_bytes",
    "llmtrain_checkpoint_seconds",
    "llmtrain_last_checkpoint_step",
}


def scrape(port: int) -> dict[str, list]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(families: dict, sample_name: str) -> float:
    for samples in families.values():
        for sample in samples:
            if sample.name == sample_name:
                return sample.value
    raise KeyError(sample_name)


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    """A single-process bf16 run, scraped once it has done a few steps, then sent SIGTERM."""
    workdir = tmp_path_factory.mktemp("live")
    port = free_port()
    config = merged(
        BASE_CONFIG,
        {
            "jobName": JOB,
            "precision": "bf16",
            "training": {"steps": TOTAL_STEPS},
            "schedule": {"warmupSteps": 2, "decay": "constant"},
            "checkpoint": {"dir": str(workdir / "checkpoints"), "interval": 1000},
            "metrics": {"port": port, "peakFlops": PEAK_FLOPS},
            "logging": {"interval": 1000},
        },
    )
    proc = start_trainer(write_config(config, workdir), workdir, env={"POD_IP": "127.0.0.1"})
    families, deadline = None, time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                families = scrape(port)
                if value(families, "llmtrain_step") >= 3:
                    break
            except (OSError, KeyError):
                pass
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return {"families": families, "returncode": proc.returncode, "stdout": stdout, "stderr": stderr, "workdir": workdir}


def test_metrics_endpoint_serves_every_documented_name(live_run):
    assert live_run["families"] is not None, live_run["stderr"][-3000:]
    assert set(live_run["families"]) >= EXPECTED_NAMES


def test_metrics_carry_job_and_node_rank_labels(live_run):
    loss = live_run["families"]["llmtrain_loss"][0]
    assert loss.labels == {"job": JOB, "node_rank": "0"}


def test_metrics_values_are_sane(live_run):
    families = live_run["families"]
    step = value(families, "llmtrain_step")
    tokens_per_step = GLOBAL_BATCH * SEQ_LEN
    assert step >= 3
    assert value(families, "llmtrain_total_steps") == TOTAL_STEPS
    assert 0 < value(families, "llmtrain_loss") < 10
    # scraped while training: the counter may be one step ahead of or behind the step gauge
    assert abs(value(families, "llmtrain_tokens_total") - step * tokens_per_step) <= tokens_per_step
    assert value(families, "llmtrain_tokens_per_second") > 0
    assert 0 < value(families, "llmtrain_mfu") < 1
    assert value(families, "llmtrain_step_seconds_count") >= step - 1
    assert math.isfinite(value(families, "llmtrain_grad_norm")) and value(families, "llmtrain_grad_norm") > 0
    assert value(families, "llmtrain_learning_rate") == pytest.approx(BASE_CONFIG["optimizer"]["lr"])
    assert value(families, "llmtrain_loss_scale") == 1.0
    assert value(families, "llmtrain_skipped_steps_total") == 0
    assert value(families, "llmtrain_host_memory_bytes") > 0


def test_sigterm_saves_a_checkpoint_and_exits_143(live_run):
    assert live_run["returncode"] == 143, live_run["stderr"][-3000:]
    stopped = [line for line in live_run["stdout"].splitlines() if '"event": "stopped"' in line]
    assert len(stopped) == 1
    step = json.loads(stopped[0])["step"]
    saved = live_run["workdir"] / "checkpoints" / f"step-{step:08d}"
    assert (saved / ".complete").is_file()
    message = json.loads((live_run["workdir"] / "termination-log").read_text())
    assert message["exitCode"] == 143 and message["reason"] == "Error"
