"""The reporter a custom script uses speaks the contract: the operator reads its metrics and its records."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from llmtrain_contract import metrics as names
from llmtrain_operator.observe import classify_failure, pod_view
from llmtrain_operator.progress import fetch_progress, final_progress, parse_progress
from llmtrain_trainer import report
from llmtrain_trainer.report import Reporter
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _three_steps() -> Reporter:
    r = Reporter(port=0, job="mine", serve=True)
    r.update(step=10, total_steps=110)  # resumed at step 10
    for step in (11, 12, 13):
        r.report(step=step, loss=2.5 - step / 100, tokens=4096, step_seconds=0.5)
    r.checkpoint_saved(12)
    return r


def test_the_operator_reads_step_loss_throughput_eta_and_checkpoint_from_the_exposition():
    progress = parse_progress(_three_steps().exposition())
    assert progress is not None
    assert (progress.step, progress.total_steps, progress.loss) == (13, 110, 2.37)
    assert progress.tokens_per_second == 8192.0
    assert progress.eta == "48s"  # 97 steps left x 0.5 s
    assert progress.last_checkpoint_step == 12


def test_the_exposition_uses_only_the_contracts_names_and_labels():
    families = {f.name: f for f in text_string_to_metric_families(_three_steps().exposition())}
    contract = {getattr(names, n) for n in dir(names) if n.isupper() and isinstance(getattr(names, n), str)}
    assert set(families) <= contract, set(families) - contract
    assert families[names.TOKENS].type == "counter" and families[names.STEP_SECONDS].type == "histogram"
    for family in families.values():
        for sample in family.samples:
            assert sample.labels["job"] == "mine" and "node_rank" in sample.labels


def test_nothing_reported_yet_is_no_progress():
    assert parse_progress(Reporter(port=0, serve=True).exposition()) is None


def test_global_rank_0_serves_the_metrics_port_the_operator_scrapes(monkeypatch):
    port = _free_port()
    monkeypatch.setenv("LLMTRAIN_METRICS_PORT", str(port))
    monkeypatch.setenv("POD_IP", "127.0.0.1")
    monkeypatch.setenv("RANK", "0")
    r = Reporter()
    try:
        r.report(step=1, loss=3.0, total_steps=5)
        progress = fetch_progress("127.0.0.1", port)
        assert progress is not None and progress.step == 1 and progress.loss == 3.0
    finally:
        r.close()


def test_other_ranks_serve_nothing(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    assert Reporter().serve is False


def test_done_leaves_the_final_progress_the_operator_completes_status_with(tmp_path, monkeypatch):
    record = tmp_path / "termination-log"
    monkeypatch.setenv("LLMTRAIN_TERMINATION_LOG", str(record))
    _three_steps().done()
    final = final_progress(None, json.loads(record.read_text()))
    assert (final.step, final.total_steps, final.loss, final.last_checkpoint_step) == (13, 110, 2.37, 12)


@pytest.mark.parametrize(
    ("code", "kind", "reason"), [(78, "permanent", "InvalidConfig"), (79, "permanent", "Diverged")]
)
def test_fail_exits_with_a_record_the_operator_treats_as_permanent(tmp_path, monkeypatch, code, kind, reason):
    record = tmp_path / "termination-log"
    monkeypatch.setenv("LLMTRAIN_TERMINATION_LOG", str(record))
    with pytest.raises(SystemExit) as exited:
        report.fail(code, "--lr must be positive")
    assert exited.value.code == code
    # torchrun's agent exits 1 whatever the worker did: the record alone must carry the verdict
    terminated = {"exitCode": 1, "message": record.read_text()}
    pod = pod_view(
        {
            "metadata": {"name": "j-node-0", "labels": {"llmtrain.dev/node-rank": "0"}},
            "status": {"phase": "Failed", "containerStatuses": [{"state": {"terminated": terminated}}]},
        }
    )
    failure = classify_failure(pod)
    assert (failure.kind, failure.reason) == (kind, reason) and "--lr must be positive" in failure.message


def test_checkpoint_dir_and_restart_attempt_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("LLMTRAIN_CHECKPOINT_DIR", raising=False)
    assert report.checkpoint_dir() is None
    monkeypatch.setenv("LLMTRAIN_CHECKPOINT_DIR", str(tmp_path / "ckpt" / "job"))
    assert report.checkpoint_dir() == tmp_path / "ckpt" / "job" and (tmp_path / "ckpt" / "job").is_dir()
    monkeypatch.setenv("LLMTRAIN_RESTART_ATTEMPT", "2")
    assert report.restart_attempt() == 2


def test_the_reporter_imports_without_torch_or_any_third_party_package():
    code = (
        "import sys\n"
        "for blocked in ('torch', 'pydantic', 'prometheus_client', 'numpy'): sys.modules[blocked] = None\n"
        "from llmtrain_trainer import report\n"
        "report.Reporter(port=0).report(step=1, loss=1.0)\n"
    )
    env = {"PYTHONPATH": f"{REPO / 'contract'}:{REPO / 'trainer_image'}", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
