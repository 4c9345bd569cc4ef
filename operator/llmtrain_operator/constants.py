"""Names shared by the API, the builders and the handlers: one place so a rename cannot drift."""

from __future__ import annotations

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
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "llmtrain-operator"

RDZV_PORT = 29400
DEFAULT_TRAINER_IMAGE = "ghcr.io/llmtrain/trainer:0.1.0"
GPU_RESOURCE = "nvidia.com/gpu"

CONFIG_DIR = "/etc/llmtrain"
CONFIG_FILE = "config.json"
CUSTOM_JOB_FILE = "job.json"  # a custom trainer's job: what the operator resolved, instead of a TrainerConfig
CHECKPOINT_DIR = "/checkpoints"
RUN_AS_USER = 1000

# Test hook: when the operator runs with LLMTRAIN_DEV_COMMAND_OVERRIDE set, a job annotated with this key runs the
# annotation's JSON list as its container command instead of torchrun. Off in production (the env is never set there).
ANNOTATION_DEV_COMMAND = f"{GROUP}/dev-command"
DEV_COMMAND_ENV = "LLMTRAIN_DEV_COMMAND_OVERRIDE"


def config_map_name(job: str) -> str:
    return f"{job}-config"


def service_name(job: str) -> str:
    return job


def pod_name(job: str, rank: int) -> str:
    return f"{job}-node-{rank}"


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
OWNED_LABELS = frozenset({LABEL_KUEUE_QUEUE, LABEL_MANAGED_BY})
