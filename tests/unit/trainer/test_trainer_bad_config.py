"""A config that can never work exits 78 with one line naming the field, and says so to the operator."""

from __future__ import annotations

import json
import subprocess

from trainer_runs import BASE_CONFIG, merged, run_trainer, trainer_command, trainer_env


def _assert_permanent_config_failure(run, field: str) -> None:
    assert run.returncode == 78, run.explain()
    lines = [line for line in run.stderr.splitlines() if line.startswith("llmtrain:")]
    assert len(lines) == 1 and field in lines[0], run.stderr
    message = run.termination_message
    assert message["llmtrain"] is True and message["exitCode"] == 78 and message["reason"] == "InvalidConfig"
    assert field in message["message"]


def test_schema_violation_exits_78_naming_the_field_before_importing_torch(tmp_path):
    config = merged(BASE_CONFIG, {"training": {"globalBatchSize": 0}})
    run = run_trainer(config, tmp_path)
    _assert_permanent_config_failure(run, "training.globalBatchSize")
    assert run.stderr.count("\n") == 1  # nothing but the one line: torch was never imported


def test_unknown_key_exits_78_naming_it(tmp_path):
    config = merged(BASE_CONFIG, {"parallelism": {"tensorParalel": 2}})
    _assert_permanent_config_failure(run_trainer(config, tmp_path), "parallelism.tensorParalel")


def test_config_that_does_not_fit_the_world_exits_78_naming_the_field(tmp_path):
    """Valid JSON, but tensor parallelism of 2 cannot run on one process: found at start-up, still permanent."""
    config = merged(BASE_CONFIG, {"parallelism": {"tensorParallel": 2}})
    _assert_permanent_config_failure(run_trainer(config, tmp_path), "parallelism.tensorParallel")


def test_file_that_is_not_json_exits_78(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")

    proc = subprocess.run(
        trainer_command(path, 1), env=trainer_env(tmp_path), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 78
    assert json.loads((tmp_path / "termination-log").read_text())["reason"] == "InvalidConfig"
