"""A researcher's run, as examples/llama-from-hf.yaml describes it: a Hugging Face Llama and a real text on volumes
(prepared inside the cluster by the trainer image's own tools), a 2-node FSDP job that imports the model at step 0,
trains on the prepared shards, reports validation loss and exports; transformers then loads the export in a pod.

The corpus is the King James Genesis (public domain, tests/e2e/data); the tokenizer is a byte-level BPE trained on
it in the cluster by `tokenizers`; the model is a random LlamaForCausalLM saved by transformers (GQA, untied
embeddings, rope_theta 50000)."""

from __future__ import annotations

import copy
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from llmtrain_testbed.testing import Cluster, fresh_namespace, wait_for

from .jobs import REPO, checkpoint_claim, create_job, example, rank0_log, wait_phase
from .test_custom_trainer import get_ltj_row

HERE = Path(__file__).parent
JOB = "genesis"
STEPS = 40
MODEL_DIR = "/models/genesis-llama"
MODEL_OUT = ["--model-out", MODEL_DIR, "--data-out", "/data"]
LOAD_ARGS = ["--initial", MODEL_DIR, "--held-out", "/data/shards/val", "--seq-len", "64"]


def trainer_image() -> str:
    """The image the chart gives jobs (what kind-e2e.sh builds); the test bed's process kubelet ignores images."""
    chart = yaml.safe_load((REPO / "charts" / "llmtrain-operator" / "Chart.yaml").read_text())
    values = yaml.safe_load((REPO / "charts" / "llmtrain-operator" / "values.yaml").read_text())
    default = f"{values['trainerImage']['repository']}:{chart['appVersion']}"
    return os.environ.get("TRAINER_IMAGE", default)


def scripts_config_map(cluster: Cluster, namespace: str) -> None:
    files = {p.name: p.read_text() for p in sorted((HERE / "in_cluster").glob("*.py"))}
    files["genesis-kjv.txt"] = (HERE / "data" / "genesis-kjv.txt").read_text()
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "researcher"}, "data": files}
    client.CoreV1Api(cluster.api_client).create_namespaced_config_map(namespace, body)


def run_pod(cluster: Cluster, namespace: str, name: str, args: list[str], claims: dict[str, str]) -> dict:
    """Run one of the in-cluster scripts in a pod with the trainer's image and `claims` ({claim: mountPath});
    return the JSON line it prints last."""
    volumes = [{"name": "scripts", "configMap": {"name": "researcher"}}]
    mounts = [{"name": "scripts", "mountPath": "/scripts", "readOnly": True}]
    for i, (claim, path) in enumerate(claims.items()):
        volumes.append({"name": f"claim-{i}", "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": f"claim-{i}", "mountPath": path})
    container = {"name": "main", "image": trainer_image(), "command": ["python", *args], "volumeMounts": mounts}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [container], "volumes": volumes},
    }
    core = client.CoreV1Api(cluster.api_client)
    core.create_namespaced_pod(namespace, pod)

    def finished() -> str | None:
        phase = core.read_namespaced_pod(name, namespace).status.phase
        return phase if phase in ("Succeeded", "Failed") else None

    phase = wait_for(finished, timeout=300, what=f"pod {name} to finish")
    log = core.read_namespaced_pod_log(name, namespace, container="main") or ""
    assert phase == "Succeeded", f"pod {name} {phase}:\n{log[-3000:]}"
    return json.loads([line for line in log.splitlines() if line.startswith("{")][-1])


def researcher_job() -> dict:
    """examples/llama-from-hf.yaml, shrunk to CPU: 2 node pods, fp32, the genesis model and shards, evaluation."""
    job = copy.deepcopy(example("llama-from-hf.yaml"))
    job["metadata"] = {"name": JOB}
    spec = job["spec"]
    spec.update(nodes=2, procsPerNode=1, precision="fp32")
    spec["resources"] = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "3Gi"}}
    spec["model"] = {"init": MODEL_DIR}
    spec["data"] = {"source": "/data/shards/train", "tokenizer": f"hf:{MODEL_DIR}/tokenizer.json", "seqLen": 64}
    spec["evaluation"] = {"source": "/data/shards/val", "interval": 20, "batches": 2}
    spec["optimizer"] = {"lr": 0.003, "weightDecay": 0.0}
    spec["schedule"] = {"warmupSteps": 4, "decay": "cosine", "minLrRatio": 0.1}
    spec["training"] = {"steps": STEPS, "globalBatchSize": 16, "microBatchSize": 8, "seed": 1}
    spec["checkpoint"].update(interval=20, keep=1)
    spec["logging"] = {"interval": 5}
    spec["runPolicy"] = {"backoffLimit": 1, "activeDeadlineSeconds": 900}
    return job


@dataclass
class ResearcherRun:
    namespace: str
    prepared: dict
    status: dict
    rank0_log: str
    events: list[client.CoreV1Event]
    ltj_row: dict[str, str]
    loaded: dict


@pytest.fixture(scope="module")
def researcher_run(cluster: Cluster, operator: str) -> ResearcherRun:
    """Prepare the volumes, train, export and load the export once; the specifications below read the result."""
    with fresh_namespace(cluster, "e2e-model-in-out") as ns:
        scripts_config_map(cluster, ns)
        for claim in ("hf-models", "training-data", "llama-from-hf-checkpoints"):
            checkpoint_claim(cluster, ns, claim)
        prepared = run_pod(
            cluster,
            ns,
            "prepare",
            ["/scripts/prepare_volume.py", "--corpus", "/scripts/genesis-kjv.txt", *MODEL_OUT],
            {"hf-models": "/models", "training-data": "/data"},
        )
        create_job(cluster, ns, researcher_job())
        status = wait_phase(cluster, ns, JOB, "Succeeded", timeout=600)
        events = client.CoreV1Api(cluster.api_client).list_namespaced_event(ns).items
        loaded = run_pod(
            cluster,
            ns,
            "load-export",
            ["/scripts/load_export.py", "--export", status.get("exportPath", "missing"), *LOAD_ARGS],
            {"hf-models": "/models", "training-data": "/data", "llama-from-hf-checkpoints": "/checkpoints"},
        )
        row = get_ltj_row(cluster, ns, JOB)
        return ResearcherRun(ns, prepared, status, rank0_log(cluster, ns, JOB), events, row, loaded)


def test_the_job_imports_the_hugging_face_model_at_step_0(researcher_run: ResearcherRun) -> None:
    assert re.search(rf"imported path={MODEL_DIR}\b", researcher_run.rank0_log), researcher_run.rank0_log[-2000:]
    assert researcher_run.status["progress"]["step"] == STEPS


def test_validation_loss_on_the_held_out_chapters_is_in_status_and_kubectl(researcher_run: ResearcherRun) -> None:
    eval_loss = researcher_run.status["progress"]["evalLoss"]
    uniform = math.log(researcher_run.prepared["vocabSize"])
    assert eval_loss < uniform - 1.0  # it learnt English from Genesis, well beyond guessing
    assert float(researcher_run.ltj_row["EVAL"]) == pytest.approx(eval_loss, abs=1e-3)


def test_the_export_is_reported_with_an_event(researcher_run: ResearcherRun) -> None:
    path = researcher_run.status["exportPath"]
    assert path.startswith("/checkpoints/")
    assert any(e.reason == "Exported" and path in e.message for e in researcher_run.events)


def test_transformers_loads_the_export_as_the_trained_model(researcher_run: ResearcherRun) -> None:
    loaded = researcher_run.loaded
    assert loaded["architecture"] == ["LlamaForCausalLM"]
    assert loaded["initialLoss"] == pytest.approx(loaded["uniformLoss"], abs=0.1)  # the random starting point
    assert loaded["exportedLoss"] < loaded["initialLoss"] - 1.0
    # The same held-out text, all of it here vs the job's 2 evaluation batches: the trained weights, not others.
    assert loaded["exportedLoss"] == pytest.approx(researcher_run.status["progress"]["evalLoss"], abs=0.3)


def test_the_exported_model_generates_with_its_tokenizer(researcher_run: ResearcherRun) -> None:
    assert researcher_run.loaded["newTokens"] == 12
    assert researcher_run.loaded["generated"].startswith("And God said")
