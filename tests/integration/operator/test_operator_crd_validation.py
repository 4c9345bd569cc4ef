"""The generated CRD on a real API server: invalid jobs are rejected with a message naming the field."""

from __future__ import annotations

import json

import pytest
from llmtrain_testbed.testing import Cluster

from .kube import Kube, job_manifest


def _with(**spec) -> dict:
    manifest = job_manifest("invalid", snippet=None)
    manifest["spec"].update(spec)
    return manifest


def _custom(**spec) -> dict:
    manifest = job_manifest("invalid", snippet=None)
    for builtin in ("model", "training", "precision"):
        manifest["spec"].pop(builtin)
    manifest["spec"]["trainer"] = {"command": ["python", "/workspace/train.py"]}
    manifest["spec"].update(spec)
    return manifest


def _without(field: str) -> dict:
    manifest = job_manifest("invalid", snippet=None)
    manifest["spec"].pop(field)
    return manifest


INVALID = [
    (_with(nodes=0), "spec.nodes"),
    (_with(procsPerNode="many"), "procsPerNode"),
    (_with(procsPerNode=3, parallelism={"tensorParallel": 2}), "spec.parallelism.tensorParallel"),
    (_with(schedule={"warmupSteps": 10}, training={"steps": 10, "globalBatchSize": 2}), "spec.schedule.warmupSteps"),
    (_with(model={"dim": 64}), "spec.model"),
    (_with(model={"dim": 64, "layers": 2, "heads": 6, "kvHeads": 4}), "spec.model.kvHeads"),
    (_with(precision="int4"), "spec.precision"),
    (_with(checkpoint={"claimName": "a", "volume": {"emptyDir": {}}}), "spec.checkpoint"),
    (_with(optimizer={"lr": 0}), "spec.optimizer.lr"),
    (_with(training={"steps": 10}), "spec.training.globalBatchSize"),
    # a custom trainer's job: the built-in trainer's sections are refused by name, torchrun is the operator's
    (_with(trainer={"command": ["python", "t.py"]}), "spec.model"),
    (_custom(data={"source": "synthetic"}), "spec.data"),
    (_custom(precision="fp32"), "spec.precision"),
    (_custom(trainer={"command": ["torchrun", "t.py"]}), "spec.trainer.command"),
    (_custom(trainer={"command": []}), "spec.trainer.command"),
    (_without("training"), "spec.training"),
]


@pytest.mark.parametrize(("manifest", "field"), INVALID, ids=[f for _, f in INVALID])
def test_api_server_rejects_invalid_job_naming_the_field(cluster: Cluster, namespace: str, crd: None, manifest, field):
    result = Kube(cluster, namespace).create(manifest, check=False)
    assert result.returncode != 0, f"accepted an invalid job ({field})"
    assert field in result.stderr, result.stderr


def test_valid_job_is_accepted_with_defaults_filled_in(cluster: Cluster, namespace: str, crd: None):
    kube = Kube(cluster, namespace)
    kube.create(job_manifest("defaults", snippet=None))
    spec = kube.job("defaults")["spec"]
    assert spec["runPolicy"]["backoffLimit"] == 3 and spec["runPolicy"]["cleanPodPolicy"] == "Running"
    assert spec["metrics"]["port"] == 9090 and spec["imagePullPolicy"] == "IfNotPresent"
    # The built-in trainer's sections get no server-side default (CEL must see whether the user wrote them; the
    # operator applies the defaults), but a section that is written gets its fields' defaults.
    assert "parallelism" not in spec and "optimizer" not in spec
    # sharding has no default: unset, the operator chooses it at admission (zero2 where it fits, else zero3).
    kube.create(job_manifest("nested", snippet=None, parallelism={"dataParallel": "ddp"}))
    assert kube.job("nested")["spec"]["parallelism"] == {
        "dataParallel": "ddp",
        "tensorParallel": 1,
        "lossParallel": True,
    }


def test_a_custom_trainer_job_is_accepted_without_the_built_in_sections(cluster: Cluster, namespace: str, crd: None):
    kube = Kube(cluster, namespace)
    kube.create(_custom())
    assert kube.job("invalid")["spec"]["trainer"] == {"command": ["python", "/workspace/train.py"]}


def test_trainer_cannot_be_added_to_a_built_in_job_later(cluster: Cluster, namespace: str, crd: None):
    kube = Kube(cluster, namespace)
    kube.create(job_manifest("builtin", snippet=None))
    patch = json.dumps({"spec": {"model": None, "training": None, "trainer": {"command": ["python", "t.py"]}}})
    result = cluster.kubectl("patch", "ltj", "builtin", "-n", namespace, "--type=merge", "-p", patch, check=False)
    assert result.returncode != 0 and "spec.trainer" in result.stderr


@pytest.mark.parametrize("section", ["model", "parallelism"])
def test_model_and_parallelism_are_immutable(cluster: Cluster, namespace: str, crd: None, section: str):
    kube = Kube(cluster, namespace)
    kube.create(job_manifest("frozen", snippet=None))
    change = {"model": {"preset": "gpt2-124m"}, "parallelism": {"dataParallel": "ddp"}}[section]
    patch = json.dumps({"spec": {section: change}})
    result = cluster.kubectl("patch", "ltj", "frozen", "-n", namespace, "--type=merge", "-p", patch, check=False)
    assert result.returncode != 0 and f"spec.{section}" in result.stderr and "immutable" in result.stderr
    kube.merge_patch("ltj", "frozen", {"spec": {"runPolicy": {"suspend": True}}})  # other fields stay editable
