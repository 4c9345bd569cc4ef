"""Semantic validation: what the CRD schema cannot check, each error naming the field to fix."""

from __future__ import annotations

from typing import Any

import pytest
from llmtrain_operator.api import LLMTrainingJobSpec
from llmtrain_operator.validate import parse_spec, procs_per_node, validate_spec

BASE: dict[str, Any] = {
    "nodes": 2,
    "procsPerNode": 4,
    "model": {"dim": 64, "layers": 2, "heads": 8, "kvHeads": 4},
    "training": {"steps": 10, "globalBatchSize": 16, "microBatchSize": 2},
}


def spec(**overrides: Any) -> LLMTrainingJobSpec:
    raw = {**BASE, **overrides}
    return LLMTrainingJobSpec.model_validate(raw)


def fields(s: LLMTrainingJobSpec) -> list[str]:
    return [e.field for e in validate_spec(s)]


def test_a_consistent_spec_has_no_errors():
    assert validate_spec(spec()) == []


@pytest.mark.parametrize(
    ("overrides", "gpus", "expected"),
    [
        ({"procsPerNode": "auto"}, None, 1),
        ({"procsPerNode": "auto"}, 8, 8),
        ({"procsPerNode": 2}, 8, 2),
    ],
)
def test_procs_per_node_auto_is_the_gpu_count_or_one(overrides, gpus, expected):
    resources = {"limits": {"nvidia.com/gpu": gpus}} if gpus else {}
    assert procs_per_node(spec(resources=resources, **overrides)) == expected


def test_heads_not_divisible_by_tensor_parallel_names_the_field():
    s = spec(model={"dim": 64, "layers": 2, "heads": 6}, parallelism={"tensorParallel": 4})
    errors = validate_spec(s)
    assert [e.field for e in errors] == ["spec.parallelism.tensorParallel"]
    assert "model.heads (6)" in errors[0].message


@pytest.mark.parametrize(
    ("model", "tp", "named"),
    [
        ({"preset": "llama-8b"}, 16, "model.kvHeads (8)"),  # 32 heads divide, 8 kv heads do not
        ({"preset": "llama-1b"}, 8, "model.kvHeads (4)"),
        ({"preset": "gpt2-124m"}, 8, "model.heads (12)"),
    ],
)
def test_a_presets_heads_are_checked_against_tensor_parallel_too(model, tp, named):
    s = spec(model=model, procsPerNode=16, parallelism={"tensorParallel": tp}, training={**BASE["training"]})
    messages = [e.message for e in validate_spec(s)]
    assert any(named in m for m in messages), messages


def test_tensor_parallel_must_divide_explicit_ffn_and_vocabulary_sizes():
    model = {"preset": "tiny", "ffnDim": 131, "vocabSize": 50257}
    messages = [e.message for e in validate_spec(spec(model=model, parallelism={"tensorParallel": 2}))]
    assert any("model.ffnDim (131)" in m for m in messages) and any("model.vocabSize (50257)" in m for m in messages)


def test_tensor_parallel_must_divide_auto_procs_per_node():
    s = spec(procsPerNode="auto", resources={"limits": {"nvidia.com/gpu": 6}}, parallelism={"tensorParallel": 4})
    assert "spec.parallelism.tensorParallel" in fields(s)


def test_global_batch_must_be_a_multiple_of_micro_batch_times_data_parallel_degree():
    s = spec(training={"steps": 10, "globalBatchSize": 12, "microBatchSize": 2})  # dp = 8 -> needs 16k
    errors = validate_spec(s)
    assert [e.field for e in errors] == ["spec.training.globalBatchSize"]
    assert "2 x 8 = 16" in errors[0].message


def test_tensor_parallel_shrinks_the_data_parallel_degree():
    s = spec(parallelism={"tensorParallel": 4}, training={"steps": 10, "globalBatchSize": 4, "microBatchSize": 2})
    assert validate_spec(s) == []  # dp = 2*4/4 = 2


def test_gpu_requests_and_limits_must_agree_and_be_whole():
    s = spec(resources={"requests": {"nvidia.com/gpu": 4}, "limits": {"nvidia.com/gpu": 8}})
    assert "spec.resources.requests.nvidia.com/gpu" in fields(s)
    s = spec(resources={"limits": {"nvidia.com/gpu": "half"}})
    assert "spec.resources.limits.nvidia.com/gpu" in fields(s)


def test_more_processes_than_gpus_is_rejected():
    s = spec(procsPerNode=8, resources={"limits": {"nvidia.com/gpu": 4}}, training={"steps": 1, "globalBatchSize": 32})
    assert "spec.procsPerNode" in fields(s)


def test_pod_template_overrides_are_reported_with_their_path():
    s = spec(podTemplate={"env": [{"name": "OK", "value": "1"}, {"name": "WORLD_SIZE", "value": "1"}]})
    errors = validate_spec(s)
    assert [str(e) for e in errors] == ["spec.podTemplate.env[1].name: WORLD_SIZE is set by the operator"]


def test_all_problems_are_reported_at_once():
    s = spec(
        model={"dim": 64, "layers": 2, "heads": 6},
        parallelism={"tensorParallel": 4},
        podTemplate={"labels": {"kueue.x-k8s.io/queue-name": "q"}},
    )
    assert set(fields(s)) == {"spec.parallelism.tensorParallel", "spec.podTemplate.labels.kueue.x-k8s.io/queue-name"}


def test_parse_spec_names_the_field_of_a_schema_violation():
    parsed, errors = parse_spec({**BASE, "nodes": 0})
    assert parsed is None
    assert errors[0].field == "spec.nodes"
    _, errors = parse_spec({**BASE, "trainng": {}})
    assert errors[0].field == "spec.trainng"
