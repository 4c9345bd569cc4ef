"""Pure functions from a job to the manifests of its children: ConfigMap, headless Service, node pods.

Names are deterministic (`<stem>-config`, `<stem>`, `<stem>-node-<i>`, where the stem is the job's name whenever it
is a DNS-1035 label of at most 53 characters, see constants.child_stem) so a restarted operator that creates "again"
gets AlreadyExists instead of duplicates. Every child carries a controller owner reference, so deleting the job
garbage-collects them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmtrain_contract.exit_codes import DEFAULT_TERMINATION_LOG, TERMINATION_LOG_ENV

from .api import LLMTrainingJobSpec
from .constants import (
    API_VERSION,
    CHECKPOINT_DIR,
    CONFIG_DIR,
    CONFIG_FILE,
    KIND,
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_KUEUE_QUEUE,
    LABEL_MANAGED_BY,
    LABEL_RANK,
    MANAGER,
    RDZV_PORT,
    RUN_AS_USER,
    VOLUME_CHECKPOINTS,
    VOLUME_CONFIG,
    VOLUME_SHM,
    config_map_name,
    job_label_value,
    pod_name,
    rendezvous_host,
    service_name,
)
from .custom_trainer import custom_command, custom_env, custom_job_file
from .grace import termination_grace_seconds
from .trainer_config import render_trainer_config
from .validate import gpu_count, pod_template_conflicts, procs_per_node


class SpecError(ValueError):
    """The spec asks for something the builders refuse (validate.py reports the same errors first)."""


@dataclass(frozen=True)
class JobRef:
    """Identity of the job the children belong to."""

    name: str
    namespace: str
    uid: str


def owner_reference(job: JobRef) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def job_labels(job: JobRef) -> dict[str, str]:
    return {LABEL_JOB: job_label_value(job.name), LABEL_MANAGED_BY: MANAGER}


def _metadata(job: JobRef, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": job.namespace,
        "labels": labels or job_labels(job),
        "ownerReferences": [owner_reference(job)],
    }


def build_config_map(job: JobRef, spec: LLMTrainingJobSpec) -> dict[str, Any]:
    """The trainer config (TrainerConfig JSON) the pods mount at /etc/llmtrain/config.json (a custom trainer's job
    gets only a job.json saying what the operator resolved)."""
    data = custom_job_file(job, spec) if spec.custom else {CONFIG_FILE: render_trainer_config(job.name, spec).to_json()}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, config_map_name(job.name)),
        "data": data,
    }


def build_service(job: JobRef, spec: LLMTrainingJobSpec) -> dict[str, Any]:
    """Headless Service: gives each pod the DNS name <pod>.<job> before it is ready, for rendezvous."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, service_name(job.name)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_JOB: job_label_value(job.name)},
            "ports": [
                {"name": "rdzv", "port": RDZV_PORT, "targetPort": RDZV_PORT, "protocol": "TCP"},
                {"name": "metrics", "port": spec.metrics.port, "targetPort": spec.metrics.port, "protocol": "TCP"},
            ],
        },
    }


def master_addr(job: JobRef) -> str:
    return rendezvous_host(job.name)


def torchrun_command(job: JobRef, spec: LLMTrainingJobSpec, rank: int) -> list[str]:
    """The explicit launcher command (the process kubelet and real images both need one); a custom trainer's
    command runs under the same torchrun options."""
    if spec.custom:
        return custom_command(torchrun_options(job, spec, rank), spec)
    return [
        "torchrun",
        *torchrun_options(job, spec, rank),
        "-m",
        "llmtrain_trainer",
        "--config",
        f"{CONFIG_DIR}/{CONFIG_FILE}",
    ]


def torchrun_options(job: JobRef, spec: LLMTrainingJobSpec, rank: int) -> list[str]:
    return [
        f"--nnodes={spec.nodes}",
        f"--nproc-per-node={procs_per_node(spec)}",
        f"--node-rank={rank}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={master_addr(job)}:{RDZV_PORT}",
        f"--rdzv-id={job.uid}",
        # Started pods wait this long for the rest of the gang (which may still be waiting for capacity).
        f"--rdzv-conf=join_timeout={spec.run_policy.rendezvous_timeout_seconds}",
    ]


# Waits until the rendezvous host's DNS name resolves, so torchrun never starts against a name the cluster DNS has
# not published yet (or has cached as missing). A timeout of 0 waits as long as it takes: node 0 may wait for GPUs
# in the scheduler's queue, which must not count against backoffLimit; the operator's startup deadline reports it.
WAIT_FOR_RENDEZVOUS = """\
import socket, sys, time
host, limit = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + limit if limit > 0 else float("inf")
while True:
    try:
        socket.getaddrinfo(host, None)
        print(f"{host} resolves", flush=True)
        break
    except OSError as e:
        if time.monotonic() > deadline:
            sys.exit(f"rendezvous host {host} did not resolve in {sys.argv[2]} s: {e}")
        time.sleep(1)
"""
RENDEZVOUS_DNS_TIMEOUT_SECONDS = 0  # no limit (see above)


def wait_for_rendezvous(job: JobRef, image: str, pull_policy: str, security: dict[str, Any]) -> dict[str, Any]:
    """Init container that holds the trainer back until `<job>-node-0.<job>` resolves (Kubeflow does the same)."""
    return {
        "name": "wait-for-rendezvous",
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": ["python", "-c", WAIT_FOR_RENDEZVOUS, master_addr(job), str(RENDEZVOUS_DNS_TIMEOUT_SECONDS)],
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
        "securityContext": security,
    }


def _env(job: JobRef, spec: LLMTrainingJobSpec, rank: int, attempt: int) -> list[dict[str, Any]]:
    procs = procs_per_node(spec)
    plain = {
        "PET_NNODES": spec.nodes,
        "PET_NPROC_PER_NODE": procs,
        "PET_NODE_RANK": rank,
        "NODE_RANK": rank,
        "MASTER_ADDR": master_addr(job),
        "MASTER_PORT": RDZV_PORT,
        "WORLD_SIZE": spec.nodes * procs,
        "LLMTRAIN_JOB_NAME": job.name,
        "LLMTRAIN_BACKEND": "nccl" if gpu_count(spec) else "gloo",
        "LLMTRAIN_RESTART_ATTEMPT": attempt,
        TERMINATION_LOG_ENV: DEFAULT_TERMINATION_LOG,
    }
    if spec.custom:
        plain.update(custom_env(job, spec, master_addr(job)))
    env: list[dict[str, Any]] = [{"name": name, "value": str(value)} for name, value in plain.items()]
    env.append({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    return env


def _resources(spec: LLMTrainingJobSpec) -> dict[str, Any]:
    requests = {resource: str(amount) for resource, amount in spec.resources.requests.items()}
    limits = {resource: str(amount) for resource, amount in spec.resources.limits.items()}
    resources: dict[str, Any] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return resources


def _checkpoint_volume(spec: LLMTrainingJobSpec) -> dict[str, Any] | None:
    checkpoint = spec.checkpoint
    if checkpoint is None:
        return None
    if checkpoint.claim_name:
        return {"name": VOLUME_CHECKPOINTS, "persistentVolumeClaim": {"claimName": checkpoint.claim_name}}
    return {"name": VOLUME_CHECKPOINTS, **(checkpoint.volume or {})}


def build_pod(
    job: JobRef,
    spec: LLMTrainingJobSpec,
    rank: int,
    attempt: int,
    default_image: str,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Node pod `rank` of restart `attempt`. `command` replaces torchrun only for the operator's test hook."""
    conflicts = pod_template_conflicts(spec)
    if conflicts:
        raise SpecError("; ".join(str(conflict) for conflict in conflicts))
    name = pod_name(job.name, rank)
    volumes, mounts = _volumes(job, spec)
    custom = spec.trainer
    image = (custom.image if custom else None) or spec.image or default_image
    extra_env = [*(custom.env if custom else []), *spec.pod_template.env]
    trainer = {
        **_trainer_container(spec, image, mounts),
        "command": command or torchrun_command(job, spec, rank),
        "env": _env(job, spec, rank, attempt) + [dict(env) for env in extra_env],
    }
    if custom and custom.working_dir:
        trainer["workingDir"] = custom.working_dir
    pod_spec = _pod_spec(job, spec, name, trainer, volumes)
    if command is None and spec.nodes > 1:
        security = _container_security()
        pod_spec["initContainers"] = [wait_for_rendezvous(job, trainer["image"], spec.image_pull_policy, security)]
    pod_spec.update(_scheduling(spec))
    metadata = _pod_metadata(job, spec, name, rank, attempt)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


def _pod_metadata(job: JobRef, spec: LLMTrainingJobSpec, name: str, rank: int, attempt: int) -> dict[str, Any]:
    template = spec.pod_template
    labels = {**template.labels, **job_labels(job), LABEL_RANK: str(rank), LABEL_ATTEMPT: str(attempt)}
    if spec.scheduling.queue_name:
        labels[LABEL_KUEUE_QUEUE] = spec.scheduling.queue_name
    metadata = _metadata(job, name, labels)
    if template.annotations:
        metadata["annotations"] = dict(template.annotations)
    return metadata


def _volumes(job: JobRef, spec: LLMTrainingJobSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The pod's volumes and the trainer's mounts: config, shared memory, checkpoints, then podTemplate's."""
    volumes: list[dict[str, Any]] = [
        {"name": VOLUME_CONFIG, "configMap": {"name": config_map_name(job.name)}},
        {"name": VOLUME_SHM, "emptyDir": {"medium": "Memory"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": VOLUME_CONFIG, "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": VOLUME_SHM, "mountPath": "/dev/shm"},
    ]
    checkpoint_volume = _checkpoint_volume(spec)
    if checkpoint_volume is not None:
        volumes.append(checkpoint_volume)
        mounts.append({"name": VOLUME_CHECKPOINTS, "mountPath": CHECKPOINT_DIR})
    volumes += [dict(volume) for volume in spec.pod_template.volumes]
    mounts += [dict(mount) for mount in spec.pod_template.volume_mounts]
    return volumes, mounts


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _trainer_container(spec: LLMTrainingJobSpec, image: str, mounts: list[dict[str, Any]]) -> dict[str, Any]:
    """The trainer container, but for its command and env (build_pod adds those)."""
    return {
        "name": "trainer",
        "image": image,
        "imagePullPolicy": spec.image_pull_policy,
        "ports": [
            {"name": "rdzv", "containerPort": RDZV_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": spec.metrics.port, "protocol": "TCP"},
        ],
        "resources": _resources(spec),
        "volumeMounts": mounts,
        "terminationMessagePath": DEFAULT_TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": _container_security(),
    }


def _pod_spec(
    job: JobRef, spec: LLMTrainingJobSpec, name: str, trainer: dict[str, Any], volumes: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "hostname": name,
        "subdomain": service_name(job.name),
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": termination_grace_seconds(spec),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [trainer],
        "volumes": volumes,
    }


# How long a node pod stays bound to a node that stopped answering (not-ready / unreachable taints) before the taint
# manager evicts it. Kubernetes adds 300 s to every pod; a gang cannot train without one of its nodes, so it waits
# less before restarting from the checkpoint elsewhere. A toleration for these keys in spec.scheduling wins.
LOST_NODE_TOLERATION_S = 60
LOST_NODE_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


def node_pod_tolerations(tolerations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The job's tolerations plus the shorter lost-node ones for taint keys the job does not already tolerate."""
    mentioned = {toleration.get("key") for toleration in tolerations}
    lost_node = [
        {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": LOST_NODE_TOLERATION_S}
        for key in LOST_NODE_TAINTS
        if key not in mentioned
    ]
    return [*tolerations, *lost_node]


def _scheduling(spec: LLMTrainingJobSpec) -> dict[str, Any]:
    """Pod spec fields from spec.scheduling and podTemplate that are set only when given."""
    scheduling = spec.scheduling
    optional = {
        "serviceAccountName": spec.pod_template.service_account_name,
        "schedulerName": scheduling.scheduler_name,
        "priorityClassName": scheduling.priority_class_name,
        "nodeSelector": dict(scheduling.node_selector) or None,
        "tolerations": node_pod_tolerations([dict(toleration) for toleration in scheduling.tolerations]),
        "affinity": scheduling.affinity,
    }
    return {key: value for key, value in optional.items() if value}
