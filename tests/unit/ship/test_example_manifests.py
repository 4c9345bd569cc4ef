"""The shipped examples are valid jobs that ask for what their names promise.

Each LLMTrainingJob parses with the operator's API models, passes the operator's semantic checks (the ones the CRD
schema cannot express), and renders a trainer config the trainer itself accepts. The server-side checks (schema,
CEL) run in tests/integration/ship/test_examples_dry_run.py.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest
import yaml
from llmtrain_contract.config import TrainerConfig
from llmtrain_operator.api import LLMTrainingJobSpec
from llmtrain_operator.trainer_config import render_trainer_config
from llmtrain_operator.validate import data_parallel_degree, procs_per_node, validate_spec
from llmtrain_trainer.prepare import main as prepare_main

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
EXPECTED = {
    "checkpoint-pvc.yaml",
    "gpt2-124m-ddp.yaml",
    "llama-1b-fsdp.yaml",
    "llama-8b-fsdp-tp.yaml",
    "tiny-cpu.yaml",
    "with-kueue.yaml",
    "prepare-data-job.yaml",
    "llama-1b-shards.yaml",
    "llama-from-hf.yaml",
}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _jobs() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, d) for p in EXAMPLES for d in _docs(p) if d["kind"] == "LLMTrainingJob"]


def _spec(name: str) -> LLMTrainingJobSpec:
    (job,) = [d for d in _docs(REPO / "examples" / name) if d["kind"] == "LLMTrainingJob"]
    return LLMTrainingJobSpec.model_validate(job["spec"])


def test_every_promised_example_is_shipped():
    assert {p.name for p in EXAMPLES} >= EXPECTED


@pytest.mark.parametrize(("filename", "job"), _jobs(), ids=[n for n, _ in _jobs()])
def test_example_job_passes_the_operators_checks_and_renders_a_config_the_trainer_accepts(filename, job):
    assert job["apiVersion"] == "llmtrain.dev/v1alpha1"
    assert "namespace" not in job["metadata"], f"{filename}: leave the namespace to kubectl -n"
    spec = LLMTrainingJobSpec.model_validate(job["spec"])
    assert validate_spec(spec) == [], f"{filename}: {validate_spec(spec)}"
    TrainerConfig.model_validate_json(render_trainer_config(job["metadata"]["name"], spec).to_json())


def test_tiny_cpu_is_the_laptop_demo():
    spec = _spec("tiny-cpu.yaml")
    assert (spec.nodes, procs_per_node(spec)) == (2, 2)
    assert "nvidia.com/gpu" not in {**spec.resources.requests, **spec.resources.limits}
    assert spec.parallelism.data_parallel == "fsdp"
    assert spec.model.preset == "tiny" and spec.data.source == "synthetic"
    assert spec.training.steps <= 60 and spec.data.seq_len <= 128, "must finish in minutes on 2 CPU cores"
    assert spec.checkpoint is not None and spec.checkpoint.claim_name == "llmtrain-checkpoints"
    assert spec.checkpoint.interval < spec.training.steps, "the demo should write a checkpoint before it ends"


def test_checkpoint_pvc_example_provides_the_claim_tiny_cpu_mounts():
    (pvc,) = _docs(REPO / "examples/checkpoint-pvc.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim"
    assert pvc["metadata"]["name"] == _spec("tiny-cpu.yaml").checkpoint.claim_name


@pytest.mark.parametrize(
    ("filename", "nodes", "gpus", "data_parallel"),
    [
        ("gpt2-124m-ddp.yaml", 1, 8, "ddp"),
        ("llama-1b-fsdp.yaml", 2, 8, "fsdp"),
        ("llama-8b-fsdp-tp.yaml", 4, 8, "fsdp"),
    ],
)
def test_gpu_example_has_its_promised_shape(filename, nodes, gpus, data_parallel):
    spec = _spec(filename)
    assert spec.nodes == nodes
    assert int(spec.resources.limits["nvidia.com/gpu"]) == gpus and procs_per_node(spec) == gpus
    assert spec.parallelism.data_parallel == data_parallel
    assert spec.precision == "bf16"


def test_llama_1b_uses_zero3():
    assert _spec("llama-1b-fsdp.yaml").parallelism.sharding == "zero3"


def test_llama_8b_combines_fsdp_across_nodes_with_tensor_parallel_8_within():
    spec = _spec("llama-8b-fsdp-tp.yaml")
    assert spec.parallelism.tensor_parallel == 8
    assert data_parallel_degree(spec) == 4


def test_kueue_example_is_queued_not_suspended():
    spec = _spec("with-kueue.yaml")
    assert spec.scheduling.queue_name == "team-a"
    assert spec.run_policy.suspend is False  # Kueue's gate holds the pods; nothing to un-suspend by hand


def test_llama_from_hf_starts_from_a_mounted_hugging_face_model_and_exports_one():
    spec = _spec("llama-from-hf.yaml")
    mounts = {m["mountPath"] for m in spec.pod_template.volume_mounts}
    assert spec.model.init is not None and spec.model.preset is None
    assert any(spec.model.init.startswith(f"{mount}/") for mount in mounts), "model.init must be on a mounted volume"
    assert spec.data.tokenizer == f"hf:{spec.model.init}/tokenizer.json"  # the model's own tokenizer travels along
    assert spec.checkpoint is not None and spec.checkpoint.export == "huggingface"


def test_prepare_data_job_runs_the_preparation_tool_with_flags_it_accepts():
    (job,) = _docs(REPO / "examples" / "prepare-data-job.yaml")
    assert job["kind"] == "Job" and job["apiVersion"] == "batch/v1"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    script = container["args"][0]
    assert "llmtrain-prepare" in script
    flags = {word for word in script.split() if word.startswith("--")}
    with contextlib.redirect_stdout(io.StringIO()) as usage, contextlib.suppress(SystemExit):
        prepare_main(["--help"])
    assert flags and all(flag in usage.getvalue() for flag in flags)
    mount = container["volumeMounts"][0]
    assert mount["mountPath"] == "/data" and not mount.get("readOnly"), "prepare writes the shards"
    shards = _spec("llama-1b-shards.yaml")
    produced = {f"/data/shards/{s}" for s in ("web/train", "web/val", "code/train")}
    assert {s.path for s in shards.data.sources} | {shards.evaluation.source} == produced
