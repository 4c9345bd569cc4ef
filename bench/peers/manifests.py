"""The jobs bench/peers/compare.py gives each operator, built to match: same pod count, same pod resources, same
training script and arguments, same checkpoint claim. Pure functions of names and sizes.
"""

from __future__ import annotations

from typing import Any

# Pods of the scale scenario stay Pending on purpose: the benchmark measures the operators, not the kubelet.
NO_NODE = {"llmtrain.dev/bench-no-such-node": "true"}
SCRIPT_CONFIG_MAP = "train-ddp"
SCRIPT = "/workspace/train_ddp.py"
CHECKPOINTS = "/checkpoints"
RESOURCES = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "3Gi"}}
PYTORCHJOB_PORT = 23456  # the training-operator's default master port (PyTorchJobDefaultPort)


def script_args(steps: int, seconds_per_step: float, checkpoint_interval: int) -> list[str]:
    """examples/custom/ddp/train_ddp.py's arguments, the same for both operators."""
    return [
        "--steps",
        str(steps),
        "--seconds-per-step",
        str(seconds_per_step),
        "--checkpoint-interval",
        str(checkpoint_interval),
    ]


def llmtrain_job(
    name: str, nodes: int, args: list[str], claim: str | None = None, pending: bool = False, backoff_limit: int = 2
) -> dict[str, Any]:
    """An LLMTrainingJob running the script with `spec.trainer` (the operator launches it through torchrun)."""
    spec: dict[str, Any] = {
        "nodes": nodes,
        "procsPerNode": 1,
        "resources": RESOURCES,
        "trainer": {"command": ["python", SCRIPT], "args": args},
        "runPolicy": {"backoffLimit": backoff_limit, "activeDeadlineSeconds": 900},
        "podTemplate": {
            "volumes": [{"name": "script", "configMap": {"name": SCRIPT_CONFIG_MAP}}],
            "volumeMounts": [{"name": "script", "mountPath": "/workspace", "readOnly": True}],
        },
    }
    if claim:
        spec["checkpoint"] = {"claimName": claim, "interval": 10, "keep": 2}
    if pending:
        spec["scheduling"] = {"nodeSelector": NO_NODE}
    return {"apiVersion": "llmtrain.dev/v1alpha1", "kind": "LLMTrainingJob", "metadata": {"name": name}, "spec": spec}


def _pytorch_pod(name: str, args: list[str], claim: str | None, pending: bool) -> dict[str, Any]:
    """The pod template: torchrun reads its topology from the PET_* variables the training-operator sets."""
    env = [{"name": "LLMTRAIN_JOB_NAME", "value": name}]  # only so the bench finds the job's processes
    mounts = [{"name": "script", "mountPath": "/workspace", "readOnly": True}]
    volumes: list[dict[str, Any]] = [{"name": "script", "configMap": {"name": SCRIPT_CONFIG_MAP}}]
    if claim:
        env.append({"name": "LLMTRAIN_CHECKPOINT_DIR", "value": CHECKPOINTS})
        mounts.append({"name": "checkpoints", "mountPath": CHECKPOINTS})
        volumes.append({"name": "checkpoints", "persistentVolumeClaim": {"claimName": claim}})
    container = {
        "name": "pytorch",
        "image": "llmtrain/trainer",  # ignored by the process kubelet; the PyTorchJob webhook wants one
        "command": ["python", "-m", "torch.distributed.run", SCRIPT, *args],
        "env": env,
        "ports": [{"name": "pytorchjob-port", "containerPort": PYTORCHJOB_PORT}],
        "resources": RESOURCES,
        "volumeMounts": mounts,
    }
    spec: dict[str, Any] = {"containers": [container], "volumes": volumes}
    if pending:
        spec["nodeSelector"] = NO_NODE
    return {"spec": spec}


def pytorch_job(
    name: str, nodes: int, args: list[str], claim: str | None = None, pending: bool = False, backoff_limit: int = 2
) -> dict[str, Any]:
    """A PyTorchJob with the same pod count (1 Master + nodes-1 Workers), its containers restarted in place on
    failure (OnFailure) until the replicas' restarts together reach `backoff_limit`."""
    template = _pytorch_pod(name, args, claim, pending)
    replicas = {"Master": 1, "Worker": nodes - 1}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name},
        "spec": {
            "nprocPerNode": "1",
            "runPolicy": {"backoffLimit": backoff_limit, "activeDeadlineSeconds": 900, "cleanPodPolicy": "None"},
            "pytorchReplicaSpecs": {
                kind: {"replicas": count, "restartPolicy": "OnFailure", "template": template}
                for kind, count in replicas.items()
                if count > 0
            },
        },
    }


def script_config_map(name: str, script: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"train_ddp.py": script}}


def checkpoint_claim(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
    }
