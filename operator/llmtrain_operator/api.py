"""The LLMTrainingJob API as pydantic models: the single source of truth for the CRD schema and for the operator.

`crdgen` renders the CRD's OpenAPI schema from these models; the operator parses `spec` with them. Python names are
snake_case, the wire (and CRD) names camelCase through the alias generator. Cross-field rules the API server can
check are declared here as CEL (`x-kubernetes-validations`); the rest lives in `validate.py`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from llmtrain_contract.rules import CEL_WARMUP_BELOW_STEPS, cel
from llmtrain_contract.sections import (
    CheckpointPolicy,
    DataSection,
    EvaluationSection,
    LoggingSection,
    MetricsSection,
    ModelSection,
    OptimizerSection,
    ParallelismSection,
    Precision,
    ScheduleSection,
    Sharding,
    TrainingSection,
)
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from .constants import MAX_NODES

# Schema markers read by crdgen (pydantic keeps unknown keys of json_schema_extra in the JSON schema).
INT_OR_STRING = {"x-kubernetes-int-or-string": True}
PRESERVE_UNKNOWN = {"x-kubernetes-preserve-unknown-fields": True}
IMMUTABLE = {"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "is immutable once the job exists"}]}
# A built-in trainer section: crdgen gives it no server-side default, so `has(self.<field>)` in CEL means "the user
# wrote it" (a custom-trainer job must not). The operator still applies the defaults when it parses the spec.
BUILTIN = {"x-llmtrain-builtin": True}

Quantity = Annotated[int | str, Field(json_schema_extra=INT_OR_STRING)]
K8sObject = Annotated[dict[str, Any], Field(json_schema_extra=PRESERVE_UNKNOWN)]


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ResourceRequirements(_Model):
    """Compute resources of each node pod (the trainer container)."""

    requests: dict[str, Quantity] = Field(
        default_factory=dict, description="Minimum resources, e.g. cpu: '4', memory: 16Gi, nvidia.com/gpu: 8."
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict, description="Maximum resources; a GPU count here is also used as the request."
    )


class CheckpointSpec(CheckpointPolicy):
    """Where and how often to checkpoint. Checkpoints go to <volume>/<job name>/step-<N>, so jobs can share a
    volume; a restarted gang, or a job re-created under the same name, resumes from the newest complete one."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            {
                "rule": "has(self.claimName) != has(self.volume)",
                "message": "set exactly one of checkpoint.claimName and checkpoint.volume",
            }
        )
    )

    claim_name: str | None = Field(
        None, min_length=1, description="PersistentVolumeClaim mounted at /checkpoints on every node."
    )
    volume: K8sObject | None = Field(
        None, description="Any Kubernetes volume source (e.g. {nfs: {...}}) mounted at /checkpoints instead of a claim."
    )


class RunPolicy(_Model):
    """Restarts, deadlines and clean-up."""

    backoff_limit: int = Field(3, ge=0, description="Gang restarts allowed after retryable failures before Failed.")
    active_deadline_seconds: int | None = Field(
        None, ge=1, description="Fail the job (DeadlineExceeded) after running this long; suspended time not counted."
    )
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete the job this many seconds after it Succeeded or Failed."
    )
    clean_pod_policy: Literal["All", "Running", "None"] = Field(
        "Running",
        description="Pods deleted when the job finishes: All, only still Running ones, or None (keep for logs).",
    )
    suspend: bool = Field(False, description="true deletes the node pods and keeps the job (Suspended); false resumes.")
    startup_timeout_seconds: int = Field(
        300, ge=1, description="Report why (event and condition) when a node pod stays Pending longer than this."
    )
    count_disruptions: bool = Field(
        False,
        description="Count disruptions (eviction, preemption, node drain or loss) against backoffLimit; by default "
        "they restart the gang from its checkpoint without using it, counted in status.disruptions.",
    )
    rendezvous_timeout_seconds: int = Field(
        1800,
        ge=60,
        description="How long started node pods wait for the rest of the gang to join (torchrun's join timeout), "
        "so a gang whose last pod is still being placed does not fail.",
    )
    termination_grace_period_seconds: int | None = Field(
        None,
        ge=0,
        description="Node pods' terminationGracePeriodSeconds. Default: 60 s, plus, when checkpoint.saveOnSigterm, "
        "the time to write the model's checkpoint (12 bytes per parameter at an assumed 200 MB/s).",
    )
    crash_loop_limit: int = Field(
        2,
        ge=0,
        description="Fail the job (CrashLoop) once this many attempts in a row failed the same way (same reason and "
        "message) without rank 0's step advancing, instead of spending the rest of backoffLimit; 0 disables.",
    )
    stall_timeout_seconds: int = Field(
        1800,
        ge=0,
        description="Restart the gang (reason Stalled, counted against backoffLimit) when rank 0's step has not "
        "advanced for this long while Running; 0 disables. Not while its metrics cannot be read (condition "
        "Progressing=Unknown says so).",
    )


class SchedulingSpec(_Model):
    """Where the node pods may run."""

    scheduler_name: str | None = Field(None, description="Scheduler for the node pods (e.g. a gang scheduler).")
    priority_class_name: str | None = Field(None, description="PriorityClass of the node pods.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pods require.")
    tolerations: list[K8sObject] = Field(default_factory=list, description="Tolerations (core/v1 Toleration).")
    affinity: K8sObject | None = Field(None, description="Affinity (core/v1 Affinity).")
    queue_name: str | None = Field(
        None,
        description="Kueue LocalQueue. The pods of each attempt form one Kueue pod group, admitted whole or not at all "
        "(their scheduling gate holds them, unbound, while the job is queued).",
    )
    gang: Literal["auto", "native", "none"] = Field(
        "auto",
        description="All-or-nothing placement of the node pods. native: a scheduling.k8s.io PodGroup (minCount = "
        "nodes) per attempt, so no pod binds until all fit; auto: native when the API server serves PodGroups and "
        "no queueName is set (Kueue's pod group then does it); none: pods bind one by one. status.gang says which.",
    )


class PodTemplateSpec(_Model):
    """Additions merged into every node pod last; operator-owned names are rejected."""

    labels: dict[str, str] = Field(default_factory=dict, description="Extra pod labels (not llmtrain.dev/*).")
    annotations: dict[str, str] = Field(default_factory=dict, description="Extra pod annotations.")
    env: list[K8sObject] = Field(
        default_factory=list, description="Extra environment variables (core/v1 EnvVar) for the trainer container."
    )
    volumes: list[K8sObject] = Field(default_factory=list, description="Extra volumes (core/v1 Volume).")
    volume_mounts: list[K8sObject] = Field(
        default_factory=list, description="Extra mounts (core/v1 VolumeMount) in the trainer container."
    )
    service_account_name: str | None = Field(None, description="ServiceAccount of the node pods.")


class CustomTrainerSpec(_Model):
    """Your own training script instead of the built-in trainer: every node pod runs `command` + `args` under
    torchrun (one process per procsPerNode), with the same Service, DNS, rendezvous and environment (RANK,
    LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT, PET_*) as the built-in trainer. See docs/custom-trainer.md."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            {
                "rule": "self.command[0] != 'torchrun' && self.command[0] != 'deepspeed'",
                "message": "trainer.command is the worker's command (e.g. [python, train.py]): the operator runs "
                "torchrun itself",
                "fieldPath": ".command",
            }
        )
    )

    image: str | None = Field(
        None, description="Image with the script and its dependencies (python and torch); spec.image's when unset."
    )
    command: list[str] = Field(
        min_length=1,
        description="What each worker runs, e.g. [python, /workspace/train.py]; torchrun starts it procsPerNode "
        "times per pod (torchrun --no-python).",
    )
    args: list[str] = Field(default_factory=list, description="Arguments appended to command.")
    env: list[K8sObject] = Field(
        default_factory=list, description="Environment variables (core/v1 EnvVar) for the script."
    )
    working_dir: str | None = Field(None, description="Working directory of the script (the image's when unset).")


_TP_DIVIDES_PROCS = {
    "rule": "type(self.procsPerNode) != int || !has(self.parallelism) "
    "|| self.procsPerNode % self.parallelism.tensorParallel == 0",
    "message": "parallelism.tensorParallel must divide procsPerNode",
    "fieldPath": ".parallelism.tensorParallel",
}
_METRICS_ENDPOINT = {
    "rule": "!has(self.metrics) || !has(self.metrics.port) || self.metrics.port >= 1",
    "message": "metrics.port must be a port number: the operator reads progress from it",
    "fieldPath": ".metrics.port",
}
# The built-in trainer's sections: none may be set on a job with `trainer` (each rule names its field).
BUILTIN_FIELDS = (
    "model",
    "data",
    "parallelism",
    "precision",
    "optimizer",
    "schedule",
    "training",
    "logging",
    "evaluation",
)
_BUILTIN_ONLY = [
    {
        "rule": f"!has(self.trainer) || !has(self.{field})",
        "message": f"{field} is a built-in trainer field: remove it from a job with trainer (or remove trainer)",
        "fieldPath": f".{field}",
    }
    for field in BUILTIN_FIELDS
] + [
    {
        "rule": "!has(self.trainer) || !has(self.metrics) || !has(self.metrics.peakFlops)",
        "message": "metrics.peakFlops is a built-in trainer field: remove it from a job with trainer",
        "fieldPath": ".metrics.peakFlops",
    },
    {
        "rule": "!has(self.trainer) || !has(self.image) || !has(self.trainer.image)",
        "message": "set the image once: trainer.image (or image), not both",
        "fieldPath": ".trainer.image",
    },
]
_BUILTIN_REQUIRED = [
    {
        "rule": f"has(self.trainer) || has(self.{field})",
        "message": f"{field} is required (or set trainer to run your own script)",
        "fieldPath": f".{field}",
    }
    for field in ("model", "training")
]
_TRANSITIONS = [
    {
        "rule": "has(self.trainer) == has(oldSelf.trainer)",
        "message": "trainer cannot be added or removed once the job exists",
        "fieldPath": ".trainer",
    },
    {
        "rule": "has(self.parallelism) == has(oldSelf.parallelism)",
        "message": "parallelism is immutable once the job exists",
        "fieldPath": ".parallelism",
    },
]
_PROCS_AUTO_OR_POSITIVE = {
    "rule": "type(self) == int ? self >= 1 : self == 'auto'",
    "message": "procsPerNode must be 'auto' or an integer >= 1",
}


class LLMTrainingJobSpec(_Model):
    """Desired state of an LLMTrainingJob: one torchrun gang of `nodes` pods training one model."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            _TP_DIVIDES_PROCS,
            CEL_WARMUP_BELOW_STEPS,
            _METRICS_ENDPOINT,
            *_BUILTIN_ONLY,
            *_BUILTIN_REQUIRED,
            *_TRANSITIONS,
        )
    )

    image: str | None = Field(
        None,
        description="Trainer image (a custom trainer's too, unless trainer.image is set); the operator's "
        "--trainer-image when unset.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="Pull policy of the trainer image."
    )
    nodes: int = Field(1, ge=1, le=MAX_NODES, description="Number of node pods (torchrun --nnodes).")
    procs_per_node: int | Literal["auto"] = Field(
        "auto",
        description="Worker processes per pod (torchrun --nproc-per-node): an integer, or 'auto' = the pod's GPU "
        "count (1 without GPUs).",
        json_schema_extra={**INT_OR_STRING, **cel(_PROCS_AUTO_OR_POSITIVE)},
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description=ResourceRequirements.__doc__
    )
    trainer: CustomTrainerSpec | None = Field(
        None,
        description=f"{' '.join((CustomTrainerSpec.__doc__ or '').split())} With trainer set, the built-in "
        f"sections ({', '.join(BUILTIN_FIELDS)}) must be absent. Cannot be added or removed later.",
    )
    model: ModelSection | None = Field(
        None, description=f"{ModelSection.__doc__} Required for the built-in trainer.", json_schema_extra=IMMUTABLE
    )
    data: DataSection = Field(default_factory=DataSection, description=DataSection.__doc__, json_schema_extra=BUILTIN)
    parallelism: ParallelismSection = Field(
        default_factory=ParallelismSection,
        description=f"{ParallelismSection.__doc__} Immutable: checkpoints are laid out for one choice.",
        json_schema_extra={**IMMUTABLE, **BUILTIN},
    )
    precision: Precision = Field(
        "bf16", description="Training precision (mixed for bf16/fp16); bf16 when unset.", json_schema_extra=BUILTIN
    )
    optimizer: OptimizerSection = Field(
        default_factory=OptimizerSection, description=OptimizerSection.__doc__, json_schema_extra=BUILTIN
    )
    schedule: ScheduleSection = Field(
        default_factory=ScheduleSection, description=ScheduleSection.__doc__, json_schema_extra=BUILTIN
    )
    training: TrainingSection | None = Field(
        None, description=f"{TrainingSection.__doc__} Required for the built-in trainer."
    )
    checkpoint: CheckpointSpec | None = Field(None, description=CheckpointSpec.__doc__)
    metrics: MetricsSection = Field(default_factory=MetricsSection, description=MetricsSection.__doc__)
    logging: LoggingSection = Field(
        default_factory=LoggingSection, description=LoggingSection.__doc__, json_schema_extra=BUILTIN
    )
    evaluation: EvaluationSection | None = Field(None, description=EvaluationSection.__doc__, json_schema_extra=BUILTIN)
    run_policy: RunPolicy = Field(default_factory=RunPolicy, description=RunPolicy.__doc__)
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec, description=SchedulingSpec.__doc__)
    pod_template: PodTemplateSpec = Field(default_factory=PodTemplateSpec, description=PodTemplateSpec.__doc__)

    @model_validator(mode="after")
    def _one_trainer(self) -> LLMTrainingJobSpec:
        """The CEL rules above, in Python (the operator also parses specs an old CRD let through)."""
        if self.trainer is not None:
            mixed = [to_camel(name) for name in BUILTIN_FIELDS if name in self.model_fields_set]
            if mixed:
                raise ValueError(f"{', '.join(mixed)}: built-in trainer field(s) set on a job with trainer")
        else:
            missing = [name for name in ("model", "training") if getattr(self, name) is None]
            if missing:
                raise ValueError(f"{', '.join(missing)}: required (or set trainer to run your own script)")
        return self

    @property
    def custom(self) -> bool:
        return self.trainer is not None


Phase = Literal["Pending", "Running", "Restarting", "Succeeded", "Failed", "Suspended"]
ConditionType = Literal[
    "Created", "Queued", "Running", "Progressing", "Restarting", "Resized", "Succeeded", "Failed", "Suspended"
]
TERMINAL_PHASES = ("Succeeded", "Failed")


class Condition(_Model):
    """One observed aspect of the job, Kubernetes-style."""

    type: ConditionType = Field(
        description="Created, Queued (pods wait for a queue or capacity), Running, Progressing, Restarting, "
        "Resized, Succeeded, Failed or Suspended."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field("", description="CamelCase machine-readable reason for the last transition.")
    message: str = Field("", description="Human-readable detail.")
    last_transition_time: str | None = Field(
        None, description="When status last changed (RFC 3339).", json_schema_extra={"format": "date-time"}
    )


class Progress(_Model):
    """Training progress read from rank 0's metrics endpoint."""

    step: int | None = Field(None, description="Last completed optimizer step.")
    total_steps: int | None = Field(None, description="Steps the run will take.")
    loss: float | None = Field(None, description="Latest training loss.")
    eval_loss: float | None = Field(None, description="Latest validation loss (spec.evaluation).")
    tokens_per_second: float | None = Field(None, description="Training throughput across the job.")
    mfu: float | None = Field(None, description="Model FLOPs utilisation (0-1).")
    eta: str | None = Field(None, description="Estimated time left, e.g. 1h02m03s.")
    last_checkpoint_step: int | None = Field(None, description="Step of the newest complete checkpoint.")
    last_step_time: str | None = Field(
        None,
        description="When the operator first saw the current step (RFC 3339): the clock of stallTimeoutSeconds.",
        json_schema_extra={"format": "date-time"},
    )


class FailureStreak(_Model):
    """The last attempt's failure and how many attempts in a row failed the same way without progress."""

    reason: str = Field(description="The failure's reason (PodFailed, Stalled, ...).")
    message: str = Field(description="The failure's message.")
    step: int | None = Field(None, description="Rank 0's step when it failed (status.progress.step).")
    count: int = Field(1, description="Attempts in a row that failed with this reason and message at this step.")


class MemoryEstimateStatus(_Model):
    """One rank's estimated peak GPU memory (llmtrain_contract.memory), computed from the spec before the first
    pods; with the GPU memory it was checked against when the job's nodes declare it (nvidia.com/gpu.memory)."""

    peak_bytes: int = Field(description="Estimated peak per rank: live tensors, CUDA context, allocator slack.")
    summary: str = Field(description="The estimate by component, in GiB, and the phase of the step it peaks in.")
    gpu_memory_bytes: int | None = Field(
        None,
        description="Memory of one GPU on the smallest node the pods may land on (GPU nodes matching "
        "scheduling.nodeSelector); absent when none declares nvidia.com/gpu.memory: then nothing was checked.",
    )


class LLMTrainingJobStatus(_Model):
    """Observed state, written only by the operator."""

    phase: Phase | None = Field(None, description="Pending, Running, Restarting, Succeeded, Failed or Suspended.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Latest observations of the job's state.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    active: int = Field(0, description="Node pods of the current attempt not yet finished.")
    ready: int = Field(0, description="Node pods with the Ready condition.")
    succeeded: int = Field(0, description="Node pods of the current attempt that succeeded.")
    failed: int = Field(0, description="Node pods of the current attempt that failed.")
    restarts: int = Field(0, description="Gang restarts after failures, counted against backoffLimit.")
    disruptions: int = Field(
        0, description="Gang restarts after disruptions (eviction, preemption, drain, node loss); not counted."
    )
    attempt: int = Field(
        0, description="Attempt of the current pods: every gang restart, disruption or resize starts the next one."
    )
    nodes: int | None = Field(None, description="Node pods of the current attempt (spec.nodes when it started).")
    procs_per_node: int | None = Field(None, description="Processes per node pod of the current attempt.")
    gang: str | None = Field(None, description="How the gang is placed: native, kueue or none (spec.scheduling.gang).")
    sharding: Sharding | None = Field(
        None,
        description="The FSDP sharding the trainer runs (zero2, zero3 or hybrid): parallelism.sharding when set, "
        "else the operator's choice at admission (zero2 when its estimate fits the nodes' declared GPU memory with "
        "the estimator's 15% margin, else zero3), pinned from the job's first pods on: a node label that changes "
        "later never flips it. Absent for ddp and custom-trainer jobs.",
    )
    start_time: str | None = Field(
        None,
        description="When the current run of pods was started (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    completion_time: str | None = Field(
        None, description="When the job Succeeded or Failed (RFC 3339).", json_schema_extra={"format": "date-time"}
    )
    observed_generation: int | None = Field(None, description="metadata.generation the status was computed from.")
    progress: Progress | None = Field(None, description=Progress.__doc__)
    last_failure: FailureStreak | None = Field(None, description=FailureStreak.__doc__)
    memory_estimate: MemoryEstimateStatus | None = Field(None, description=MemoryEstimateStatus.__doc__)
    export_path: str | None = Field(
        None,
        description="Where the Succeeded run wrote its Hugging Face model (checkpoint.export), as the pods saw it: "
        "a directory on the checkpoint volume.",
    )


class LLMTrainingJob(_Model):
    """A distributed LLM training run: a torchrun gang of node pods, restarted as a whole on failure."""

    model_config = ConfigDict(extra="ignore")

    spec: LLMTrainingJobSpec = Field(description=LLMTrainingJobSpec.__doc__)
    status: LLMTrainingJobStatus | None = Field(None, description=LLMTrainingJobStatus.__doc__)
