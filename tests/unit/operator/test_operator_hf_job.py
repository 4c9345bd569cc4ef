"""Jobs that start from a Hugging Face model (model.init) and export one (checkpoint.export), as the operator
sees them: the shape is on a volume it cannot read, so shape checks are the trainer's; the export's path comes
back in rank 0's termination record and lands in status.exportPath with an Exported event."""

from __future__ import annotations

import json

from llmtrain_operator.api import LLMTrainingJobSpec
from llmtrain_operator.grace import UNKNOWN_SHAPE, default_grace_seconds
from llmtrain_operator.memory_preflight import memory_errors, memory_warning
from llmtrain_operator.reconcile import reconcile
from llmtrain_operator.trainer_config import render_trainer_config
from llmtrain_operator.validate import validate_spec
from reconcile_inputs import NOW, RUNNING, SETTINGS, job, pod, reasons, seen

INIT_SPEC = {
    "nodes": 2,
    "procsPerNode": 8,
    "resources": {"limits": {"nvidia.com/gpu": 8}},
    "model": {"init": "/models/llama-3.2-1b"},
    "parallelism": {"tensorParallel": 8},
    "training": {"steps": 100, "globalBatchSize": 16},
    "checkpoint": {"claimName": "ckpt", "export": "huggingface"},
}


def spec(**overrides) -> LLMTrainingJobSpec:
    return LLMTrainingJobSpec.model_validate({**INIT_SPEC, **overrides})


def test_an_init_job_passes_admission_without_a_shape_to_check():
    assert validate_spec(spec()) == []
    # the checks that need no shape still run
    errors = validate_spec(spec(parallelism={"tensorParallel": 3}))
    assert [e.field for e in errors] == ["spec.parallelism.tensorParallel"]


def test_an_init_job_skips_the_memory_preflight():
    assert memory_errors(spec(), gpu_memory_bytes=1) == []
    assert memory_warning(spec(), gpu_memory_bytes=1) is None


def test_an_init_jobs_grace_period_assumes_an_8b_model():
    like = spec(model={"preset": UNKNOWN_SHAPE}, parallelism={"tensorParallel": 8})
    assert default_grace_seconds(spec()) == default_grace_seconds(like) > 60


def test_the_trainer_config_carries_init_and_export():
    config = json.loads(render_trainer_config("demo", spec()).to_json())
    assert config["model"] == {"init": "/models/llama-3.2-1b"}
    assert config["checkpoint"]["export"] == "huggingface" and config["checkpoint"]["dir"] == "/checkpoints/demo"


def summary(**fields) -> str:
    return json.dumps({"llmtrain": True, "exitCode": 0, "reason": "Completed", "step": 10, "totalSteps": 10, **fields})


def test_success_records_the_export_path_and_an_exported_event():
    record = summary(export="/checkpoints/demo/huggingface")
    pods = seen(pod(0, "Succeeded", termination_message=record), pod(1, "Succeeded"))
    d = reconcile(job(status=RUNNING), pods, NOW, SETTINGS)
    assert d.status["phase"] == "Succeeded"
    assert d.status["exportPath"] == "/checkpoints/demo/huggingface"
    assert reasons(d) == [("Normal", "Succeeded"), ("Normal", "Exported")]
    (exported,) = [e for e in d.events if e.reason == "Exported"]
    assert "/checkpoints/demo/huggingface" in exported.message


def test_success_without_an_export_has_no_export_path_or_event():
    pods = seen(pod(0, "Succeeded", termination_message=summary()), pod(1, "Succeeded"))
    d = reconcile(job(status=RUNNING), pods, NOW, SETTINGS)
    assert d.status["phase"] == "Succeeded" and "exportPath" not in d.status
    assert reasons(d) == [("Normal", "Succeeded")]


def test_memory_preflight_skips_a_model_whose_shape_is_on_a_volume():
    from llmtrain_operator.memory_preflight import preflight
    from llmtrain_operator.validate import parse_spec

    gpus = {"requests": {"nvidia.com/gpu": 8}, "limits": {"nvidia.com/gpu": 8}}
    raw = {"model": {"init": "/models/llama"}, "training": {"steps": 1, "globalBatchSize": 8}, "resources": gpus}
    spec, errors = parse_spec(raw)
    assert errors == [] and preflight(spec, 80 * 2**30) is None
