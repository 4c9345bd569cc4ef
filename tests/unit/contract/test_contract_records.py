"""Exit codes, the termination record and metric names: what one side writes, the other side reads."""

from __future__ import annotations

import pytest
from llmtrain_contract import metrics as names
from llmtrain_contract.config import TrainerConfig
from llmtrain_contract.exit_codes import EXIT_BAD_CONFIG, EXIT_OK, parse_termination_record, termination_record
from pydantic import ValidationError


def test_a_termination_record_survives_a_traceback_around_it():
    record = termination_record(EXIT_BAD_CONFIG, "training.steps: must be >= 1")
    parsed = parse_termination_record(f"Traceback ...\n{record}\nmore noise")
    assert parsed["reason"] == "InvalidConfig" and parsed["exitCode"] == 78


def test_success_carries_the_final_summary_and_drops_unknown_values():
    parsed = parse_termination_record(termination_record(EXIT_OK, "done", step=12, loss=None))
    assert parsed["reason"] == "Completed" and parsed["step"] == 12 and "loss" not in parsed


def test_other_json_lines_are_not_records():
    assert parse_termination_record('{"exitCode": 78}') is None
    assert parse_termination_record(None) is None


def test_every_metric_name_is_in_the_llmtrain_namespace():
    values = [v for k, v in vars(names).items() if k.isupper() and isinstance(v, str) and k not in ("METRICS_PATH",)]
    assert all(v.startswith(names.PREFIX) for v in values if v != names.PREFIX)


def test_the_trainer_config_rejects_unknown_keys_and_late_warmup_naming_the_field():
    base = {"model": {"preset": "tiny"}, "training": {"steps": 5, "globalBatchSize": 1}}
    with pytest.raises(ValidationError, match="tensorParalel"):
        TrainerConfig.model_validate({**base, "parallelism": {"tensorParalel": 2}})
    with pytest.raises(ValidationError, match=r"schedule\.warmupSteps"):
        TrainerConfig.model_validate({**base, "schedule": {"warmupSteps": 5}})
