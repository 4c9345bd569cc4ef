"""Contract: the ConfigMap the operator renders parses as the TrainerConfig the trainer loads (llmtrain_contract)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from llmtrain_contract.config import TrainerConfig
from llmtrain_operator.api import LLMTrainingJobSpec
from llmtrain_operator.builders import JobRef, build_config_map

REPO = Path(__file__).resolve().parents[3]
FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("*.yaml"))


def _jobs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "LLMTrainingJob"]


def _built_in(path: Path) -> bool:
    return all("trainer" not in job["spec"] for job in _jobs(path))  # custom-trainer jobs render no TrainerConfig


EXAMPLES = [
    p for p in sorted((REPO / "examples").glob("**/*.yaml")) if _jobs(p) and "invalid" not in p.name and _built_in(p)
]


@pytest.mark.parametrize("path", FIXTURES + EXAMPLES, ids=lambda p: str(p.relative_to(REPO)))
def test_rendered_config_parses_as_the_trainer_config(path: Path):
    for doc in _jobs(path):
        spec = LLMTrainingJobSpec.model_validate(doc["spec"])
        cm = build_config_map(JobRef(doc["metadata"]["name"], "ns", "uid"), spec)
        config = TrainerConfig.model_validate(json.loads(cm["data"]["config.json"]))
        assert config.job_name == doc["metadata"]["name"]
        assert config.training.steps == spec.training.steps
        assert config.parallelism.tensor_parallel == spec.parallelism.tensor_parallel
        assert (config.checkpoint.dir is not None) == (spec.checkpoint is not None)


def test_a_minimal_spec_renders_exactly_the_trainer_defaults():
    spec = LLMTrainingJobSpec.model_validate(
        {"model": {"preset": "tiny"}, "training": {"steps": 1, "globalBatchSize": 1}}
    )
    cm = build_config_map(JobRef("d", "ns", "u"), spec)
    rendered = TrainerConfig.model_validate(json.loads(cm["data"]["config.json"]))
    trainer_default = TrainerConfig.model_validate(
        {"jobName": "d", "model": {"preset": "tiny"}, "training": {"steps": 1, "globalBatchSize": 1}}
    )
    assert rendered == trainer_default
