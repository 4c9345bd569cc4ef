"""The custom-trainer examples run as the operator runs them: two node "pods" per job on this machine, each started
from the operator's own pod manifest (custom_runs.py), on CPU/gloo."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from types import SimpleNamespace

import pytest
from custom_runs import EXAMPLES, free_port, launch, workers
from llmtrain_operator.progress import parse_progress

DDP = str(EXAMPLES / "ddp" / "train_ddp.py")


def _progress(port: int):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return parse_progress(resp.read().decode())
    except OSError:
        return None


def test_ddp_example_reports_progress_survives_a_killed_worker_and_resumes_from_its_checkpoint(tmp_path):
    spec = {
        "nodes": 2,
        "procsPerNode": 2,
        "trainer": {"command": ["python", DDP], "args": ["--steps", "60", "--seconds-per-step", "0.2"]},
        "checkpoint": {"volume": {"emptyDir": {}}, "interval": 10},
    }
    port = free_port()
    first = launch("ddp", spec, tmp_path, metrics_port=port)
    try:
        deadline, progress = time.monotonic() + 300, None
        while time.monotonic() < deadline and not (progress and (progress.last_checkpoint_step or 0) >= 10):
            time.sleep(0.5)
            progress = _progress(port)
        assert progress is not None and progress.total_steps == 60 and progress.loss is not None, first.explain()
        assert progress.tokens_per_second and progress.eta
        os.kill(workers(first, "train_ddp.py")[-1], signal.SIGKILL)
        codes = first.wait(180)
    finally:
        first.kill()
    assert any(code != 0 for code in codes), first.explain()

    second = launch("ddp", spec, tmp_path, attempt=1, metrics_port=port)  # the operator's gang restart
    try:
        assert second.wait(600) == [0, 0], second.explain()
    finally:
        second.kill()
    log = second.explain()
    assert "train_ddp: attempt 1, world 4, resumed from step" in log and "step 60/60" in log
    records = [node.record() for node in second.nodes]
    assert any('"step": 60' in record and '"exitCode": 0' in record for record in records), records


def test_a_pytorchjob_script_reading_only_pet_and_master_variables_runs_unchanged(tmp_path):
    script = str(EXAMPLES / "pytorchjob" / "train_pytorchjob.py")
    gang = launch("kf", {"nodes": 2, "procsPerNode": 2, "trainer": {"command": ["python", script]}}, tmp_path)
    try:
        assert gang.wait(300) == [0, 0], gang.explain()
    finally:
        gang.kill()
    assert gang.explain().count("all-reduce ok") == 4


def test_a_bad_argument_exits_78_on_every_node_despite_torchrun(tmp_path):
    spec = {"nodes": 2, "procsPerNode": 1, "trainer": {"command": ["python", DDP], "args": ["--lr", "0"]}}
    gang = launch("bad", spec, tmp_path)
    try:
        assert gang.wait(300) == [78, 78], gang.explain()
    finally:
        gang.kill()
    assert all('"exitCode": 78' in node.record() for node in gang.nodes)


def test_the_hugging_face_callback_reports_steps_loss_checkpoints_and_the_end(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from llmtrain_trainer.hf import LLMTrainCallback
    from llmtrain_trainer.report import Reporter

    monkeypatch.setenv("LLMTRAIN_TERMINATION_LOG", str(tmp_path / "record"))
    callback = LLMTrainCallback(tokens_per_step=1024, reporter=Reporter(port=0, serve=True))
    state = SimpleNamespace(global_step=0, max_steps=20, num_input_tokens_seen=0)
    for step in range(1, 11):
        state.global_step = step
        callback.on_step_end(None, state, None)
        if step % 5 == 0:
            callback.on_log(None, state, None, logs={"loss": 5.0 - step / 10})
    callback.on_save(None, state, None)
    progress = parse_progress(callback.reporter.exposition())
    assert (progress.step, progress.total_steps, progress.loss, progress.last_checkpoint_step) == (10, 20, 4.0, 10)
    assert progress.tokens_per_second and progress.tokens_per_second > 0
    callback.on_train_end(None, state, None)
    assert '"step": 10' in (tmp_path / "record").read_text()
