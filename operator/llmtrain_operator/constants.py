"""Names shared by the API, the builders and the handlers: one place so a rename cannot drift."""

from __future__ import annotations

import hashlib
import re

from llmtrain_contract.exit_codes import TERMINATION_LOG_ENV

GROUP = "llmtrain.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "LLMTrainingJob"
PLURAL = "llmtrainingjobs"
SINGULAR = "llmtrainingjob"
SHORT_NAMES = ["ltj"]
CATEGORIES = ["all", "llmtrain"]

LABEL_JOB = f"{GROUP}/job-name"
LABEL_RANK = f"{GROUP}/node-rank"
LABEL_ATTEMPT = f"{GROUP}/attempt"
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
# Kueue's plain-pod groups: the pods of one attempt are one Workload, admitted whole or not at all.
LABEL_KUEUE_POD_GROUP = "kueue.x-k8s.io/pod-group-name"
ANNOTATION_KUEUE_GROUP_TOTAL = "kueue.x-k8s.io/pod-group-total-count"
ANNOTATION_KUEUE_RETRIABLE = "kueue.x-k8s.io/retriable-in-group"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "llmtrain-operator"

RDZV_PORT = 29400
DEFAULT_TRAINER_IMAGE = "ghcr.io/llmtrain/trainer:0.1.0"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"  # MiB per GPU, set by GPU feature discovery

CONFIG_DIR = "/etc/llmtrain"
CONFIG_FILE = "config.json"
CUSTOM_JOB_FILE = "job.json"  # a custom trainer's job: what the operator resolved, instead of a TrainerConfig
CHECKPOINT_DIR = "/checkpoints"
RUN_AS_USER = 1000

# Test hook: when the operator runs with LLMTRAIN_DEV_COMMAND_OVERRIDE set, a job annotated with this key runs the
# annotation's JSON list as its container command instead of torchrun. Off in production (the env is never set there).
ANNOTATION_DEV_COMMAND = f"{GROUP}/dev-command"
DEV_COMMAND_ENV = "LLMTRAIN_DEV_COMMAND_OVERRIDE"


# Child names. A job's name is a DNS-1123 subdomain (dots allowed, up to 253 characters), but the Service name must
# be a DNS-1035 label (no dots, starts with a letter, at most 63) and each pod's hostname a DNS-1123 label (at most
# 63): `<stem>-node-<rank>` with ranks up to 4095 leaves 53 characters for the stem. A name that already fits is its
# own stem (today's names stay); any other gets a readable prefix plus a short hash of the whole name, so the stem is
# stable (a restarted operator derives the same one) and two long names sharing a prefix do not collide.
MAX_NODES = 4096
_POD_SUFFIX_LEN = len(f"-node-{MAX_NODES - 1}")
MAX_STEM = 63 - _POD_SUFFIX_LEN  # 53
_HASH_LEN = 8
_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
MAX_LABEL_VALUE = 63


def _short_hash(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:_HASH_LEN]


def child_stem(job: str) -> str:
    """The DNS-1035 label, at most 53 characters, that the job's child names are built from."""
    if len(job) <= MAX_STEM and _DNS1035.fullmatch(job):
        return job
    readable = re.sub(r"[^a-z0-9-]+", "-", job.lower())
    if not readable[:1].isalpha():
        readable = "j" + readable
    readable = readable[: MAX_STEM - _HASH_LEN - 1].rstrip("-")
    return f"{readable}-{_short_hash(job)}"


def job_label_value(job: str) -> str:
    """The llmtrain.dev/job-name label value: the job name when it fits a label value (63), else its stem."""
    return job if len(job) <= MAX_LABEL_VALUE else child_stem(job)


def config_map_name(job: str) -> str:
    return f"{child_stem(job)}-config"


def service_name(job: str) -> str:
    return child_stem(job)


def pod_name(job: str, rank: int) -> str:
    """Also the pod's hostname: a DNS-1123 label."""
    return f"{child_stem(job)}-node-{rank}"


def rendezvous_host(job: str) -> str:
    """Node 0's DNS name under the headless Service (MASTER_ADDR, the c10d rendezvous endpoint)."""
    return f"{pod_name(job, 0)}.{service_name(job)}"


def pod_group_name(job: str, attempt: int) -> str:
    """The scheduling.k8s.io PodGroup (native gang) and Kueue pod group of one attempt."""
    return f"{job}-attempt-{attempt}"


# Names the operator sets on every node pod; podTemplate may not override them.
OWNED_ENV = frozenset(
    {
        "PET_NNODES",
        "PET_NPROC_PER_NODE",
        "PET_NODE_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "WORLD_SIZE",
        "POD_IP",
        "NODE_RANK",
        "LLMTRAIN_JOB_NAME",
        "LLMTRAIN_BACKEND",
        "LLMTRAIN_RESTART_ATTEMPT",
        # a custom trainer's job also gets these (custom_trainer.custom_env)
        "PET_MASTER_ADDR",
        "PET_MASTER_PORT",
        "LLMTRAIN_METRICS_PORT",
        "LLMTRAIN_CHECKPOINT_DIR",
        "LLMTRAIN_CHECKPOINT_INTERVAL",
        "LLMTRAIN_CHECKPOINT_KEEP",
        TERMINATION_LOG_ENV,
    }
)
VOLUME_CONFIG = "llmtrain-config"
VOLUME_SHM = "dshm"
VOLUME_CHECKPOINTS = "checkpoints"
OWNED_VOLUMES = frozenset({VOLUME_CONFIG, VOLUME_SHM, VOLUME_CHECKPOINTS})
OWNED_MOUNT_PATHS = frozenset({CONFIG_DIR, "/dev/shm", CHECKPOINT_DIR})
OWNED_LABEL_PREFIX = f"{GROUP}/"
OWNED_LABELS = frozenset({LABEL_KUEUE_QUEUE, LABEL_KUEUE_POD_GROUP, LABEL_MANAGED_BY})
OWNED_ANNOTATIONS = frozenset({ANNOTATION_KUEUE_GROUP_TOTAL, ANNOTATION_KUEUE_RETRIABLE})
