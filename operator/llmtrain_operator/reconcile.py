"""The operator's brain: a pure function from (job, observed children, now, settings) to what to do next.

Level-triggered and idempotent: the same inputs give the same Decision, and applying a Decision twice is harmless
(creates use deterministic names, deletes tolerate NotFound). Status is written *before* children are touched, and
node pods carry the restart attempt they belong to (label llmtrain.dev/attempt == status.attempt), so an operator
killed between the two steps finds stale pods on restart and deletes them instead of counting a failure twice.

`reconcile` runs the named policies of POLICIES in order over one ReconcileContext; the first policy that settles
the job's state for this round returns the Decision, later ones never see it:

    lost_node_policy         terminating pods on a node that stopped reporting, or 30 s past their deadline: deleted
                             with no grace, with a NodeLost Warning; hands on (every job, any phase)
    terminal_policy          a Failed/Succeeded job: cleanPodPolicy, then ttlSecondsAfterFinished
    spec_validation_policy   an invalid spec (or dev-command annotation) fails the job with InvalidSpec; an unset
                             FSDP sharding is resolved (zero2 where it fits, else zero3; pinned in status.sharding
                             once pods exist); before the first pods, one whose estimated GPU memory cannot fit its
                             nodes' GPUs with WillNotFit
    gang_policy              how the gang is placed (native PodGroup, Kueue pod group, none): status.gang
    namesake_policy          wait while a deleted job of the same name still holds the config or Service name
    create_failure_policy    a create the API server rejected -> Created=False/CreateFailed + Warning; creates pause
    config_service_policy    create the ConfigMap and Service when missing
    suspend_policy           suspend deletes the pods and stops there; resume returns the job to Pending
    deadline_policy          runPolicy.activeDeadlineSeconds, counted from the current run's start
    attempt_policy           count the current attempt's pods; delete pods of earlier attempts
    resize_policy            spec.nodes/procsPerNode changed: checkpointed stop, next attempt at the new size
    failure_policy           permanent exit -> Failed; disruption (eviction, preemption, node loss) -> gang restart
                             not counted; other failures -> gang restart within backoffLimit, else
                             BackoffLimitExceeded; the same failure crashLoopLimit attempts in a row without
                             progress -> CrashLoop
    success_policy           every node pod Succeeded -> Succeeded, with rank 0's final progress
    stall_policy             Running, but rank 0's step has not moved for stallTimeoutSeconds -> gang restart
                             (Stalled); unreadable metrics -> Progressing=Unknown instead
    pod_creation_policy      create the attempt's missing pods (and its PodGroup) once their names are free
                             (config re-rendered); Created=True once every node pod exists
    queue_policy             pods held by a queue or waiting for capacity -> condition Queued, at once
    running_policy           every node pod Running -> Running
    startup_policy           pods Pending past startupTimeoutSeconds get a condition (and a Warning) saying why
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from llmtrain_contract.exit_codes import parse_termination_record
from llmtrain_contract.sections import DEFAULT_SHARDING
from pydantic import ValidationError

from .api import (
    TERMINAL_PHASES,
    Condition,
    FailureStreak,
    LLMTrainingJobSpec,
    LLMTrainingJobStatus,
    Progress,
    RunPolicy,
)
from .builders import JobRef, build_config_map, build_pod, build_service
from .constants import ANNOTATION_DEV_COMMAND, config_map_name, pod_group_name, pod_name, service_name
from .gang import GangMode, GangUnavailable, build_pod_group, gang_mode, place_in_gang
from .memory_preflight import choose_sharding, preflight
from .observe import Failure, PodView, classify_failure, pending_reason
from .progress import final_progress, with_step_time
from .timestamps import parse_time, rfc3339
from .validate import parse_spec, procs_per_node, validate_spec

RETRY_SOON = 1.0  # seconds; while pods terminate or names are still taken
# A kubelet stops a deleted pod within its grace period; this long past it, nothing acts for the pod: its node is lost.
LOST_POD_AFTER = timedelta(seconds=30)
# A trainer serves no metrics while it starts (imports, rendezvous, loading): unreadable metrics are reported only
# once they have been for this long, or for stallTimeoutSeconds when that is shorter.
METRICS_GRACE_SECONDS = 120.0
CREATE_RETRY_SECONDS = 5.0  # after the API server rejected a create (quota, admission webhook, RBAC)


@dataclass(frozen=True)
class JobView:
    """The parts of an LLMTrainingJob object reconcile reads."""

    name: str
    namespace: str
    uid: str
    spec: dict[str, Any]
    status: dict[str, Any] = field(default_factory=dict)
    generation: int = 1
    annotations: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> JobView:
        meta = body.get("metadata", {})
        return cls(
            name=meta["name"],
            namespace=meta.get("namespace", "default"),
            uid=meta.get("uid", ""),
            spec=dict(body.get("spec") or {}),
            status=dict(body.get("status") or {}),
            generation=int(meta.get("generation") or 1),
            annotations=dict(meta.get("annotations") or {}),
        )

    @property
    def ref(self) -> JobRef:
        return JobRef(self.name, self.namespace, self.uid)


@dataclass(frozen=True)
class CreateFailure:
    """A create the API server refused with a 4xx other than AlreadyExists: the message is the API's own."""

    message: str
    at: datetime


@dataclass(frozen=True)
class MetricsUnreachable:
    """No node pod's metrics port answered, at every read since `since`."""

    message: str
    since: datetime


@dataclass(frozen=True)
class Observed:
    """Children that exist now (pods of any attempt, including terminating ones)."""

    pods: tuple[PodView, ...] = ()
    config_map: bool = False
    service: bool = False
    # Names still held by children of a deleted job of the same name, waiting for garbage collection.
    taken: frozenset[str] = frozenset()
    # Nodes whose kubelet stopped reporting (Ready=Unknown): pods there are never confirmed deleted.
    unreachable_nodes: frozenset[str] = frozenset()
    # The ConfigMap's data when it was read for this reconcile (before a new attempt's pods), else None.
    config: dict[str, str] | None = None
    # The latest create the API server rejected (cleared once creates go through again).
    create_failure: CreateFailure | None = None
    # Why rank 0's metrics could not be read, and since when (None: read at the last attempt, or not tried).
    metrics_unreachable: MetricsUnreachable | None = None
    # Memory of one GPU on the worst node the pods may land on (GPU nodes matching spec.scheduling.nodeSelector,
    # label nvidia.com/gpu.memory); None when no such node declares it: no memory preflight.
    gpu_memory_bytes: int | None = None


@dataclass(frozen=True)
class OperatorSettings:
    default_image: str
    allow_dev_command: bool = False  # test hook: honour the llmtrain.dev/dev-command annotation
    native_gang: bool = False  # the API server serves scheduling.k8s.io/v1beta1 PodGroups (discovered at start)


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Decision:
    status: dict[str, Any]  # the complete new status, camelCase
    old_status: dict[str, Any]
    creates: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)  # merge-patched before anything is created
    deletes: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)
    force_deletes: list[str] = field(default_factory=list)  # pods whose kubelet is gone: gracePeriodSeconds=0
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    delete_job: bool = False

    @property
    def status_patch(self) -> dict[str, Any] | None:
        """JSON merge patch turning the old status into the new one; None when nothing changed."""
        patch = merge_patch(self.old_status, self.status)
        return patch or None

    @property
    def phase(self) -> str | None:
        return self.status.get("phase")

    def requeue(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 patch from old to new (removed keys become null; lists are replaced whole)."""
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        elif value != before or key not in old:
            patch[key] = value
    return patch


def _load_status(raw: dict[str, Any]) -> LLMTrainingJobStatus:
    try:
        return LLMTrainingJobStatus.model_validate(raw)
    except ValidationError:
        return LLMTrainingJobStatus()  # a hand-edited status is rebuilt rather than trusted


def _status_dict(status: LLMTrainingJobStatus) -> dict[str, Any]:
    return status.model_dump(by_alias=True, exclude_none=True)


class ReconcileContext:
    """One reconcile in progress: its inputs, the status being built from the stored one, and the Decision so far.

    Policies read the inputs and change `status` and `decision`; `finish()` seals the status into the Decision.
    """

    def __init__(
        self,
        job: JobView,
        observed: Observed,
        now: datetime,
        settings: OperatorSettings,
        progress: Progress | None = None,
    ) -> None:
        self.job, self.observed, self.now, self.settings = job, observed, now, settings
        stored = _load_status(job.status)
        self.status = stored.model_copy(deep=True)
        self.status.phase = self.status.phase or "Pending"
        self.status.observed_generation = job.generation
        if "attempt" not in job.status:
            self.status.attempt = self.status.restarts  # written before attempts were counted apart from restarts
        if progress is not None:
            self.status.progress = with_step_time(stored.progress, progress, now)
        self.decision = Decision(status={}, old_status=_status_dict(stored) if job.status else {})
        self._spec: LLMTrainingJobSpec | None = None
        self.command: list[str] | None = None  # the dev-command annotation, when the operator honours it
        self.current: list[PodView] = []  # this attempt's node pods, set by attempt_policy
        self.gang: GangMode = "none"  # set by gang_policy
        self.hold_creates = False  # set by create_failure_policy while a rejected create waits for its retry

    # -- the accepted spec ---------------------------------------------------------------------------------------
    def accept(self, spec: LLMTrainingJobSpec, command: list[str] | None) -> None:
        self._spec, self.command = spec, command

    @property
    def spec(self) -> LLMTrainingJobSpec:
        if self._spec is None:
            raise RuntimeError("the spec is read before spec_validation_policy accepted it")
        return self._spec

    @property
    def started(self) -> bool:
        """The job's first pods were created (status.nodes is recorded with them) or exist: admission is over."""
        return self.status.nodes is not None or bool(self.observed.pods)

    @property
    def live(self) -> list[PodView]:
        """This attempt's pods that are not being deleted."""
        return [pod for pod in self.current if not pod.terminating]

    # -- conditions and events ----------------------------------------------------------------------------------
    def condition(self, condition_type: str) -> Condition | None:
        return next((c for c in self.status.conditions if c.type == condition_type), None)

    def set_condition(self, condition_type: str, status: str, reason: str, message: str = "") -> None:
        """Set a condition; its lastTransitionTime moves only when its status does."""
        conditions = self.status.conditions
        index = next((i for i, c in enumerate(conditions) if c.type == condition_type), None)
        unchanged = index is not None and conditions[index].status == status
        since = conditions[index].last_transition_time if unchanged else rfc3339(self.now)
        updated = Condition(
            type=condition_type, status=status, reason=reason, message=message, last_transition_time=since
        )
        if index is None:
            conditions.append(updated)
        else:
            conditions[index] = updated

    def settle_restarting(self, reason: str, message: str) -> None:
        """A restart in progress ends when the job succeeds or is suspended, not only when pods run again."""
        restarting = self.condition("Restarting")
        if restarting is not None and restarting.status == "True":
            self.set_condition("Restarting", "False", reason, message)

    def event(self, event_type: str, reason: str, message: str) -> None:
        self.decision.events.append(Event(event_type, reason, message))

    # -- pods ---------------------------------------------------------------------------------------------------
    def delete_pods(self, pods: list[PodView]) -> None:
        for pod in pods:
            if not pod.terminating and ("Pod", pod.name) not in self.decision.deletes:
                self.decision.deletes.append(("Pod", pod.name))

    def count_pods(self, nodes: int | None = None) -> list[PodView]:
        """Update the node counts from the current attempt's pods (ranks below `nodes`), and return those pods."""
        current = [
            pod
            for pod in self.observed.pods
            if pod.attempt == self.status.attempt and pod.rank >= 0 and (nodes is None or pod.rank < nodes)
        ]
        self.status.active = sum(1 for pod in current if not pod.finished and not pod.terminating)
        self.status.ready = sum(1 for pod in current if pod.ready and not pod.terminating)
        self.status.succeeded = sum(1 for pod in current if pod.phase == "Succeeded")
        self.status.failed = sum(1 for pod in current if pod.phase == "Failed")
        return current

    def finish(self) -> Decision:
        self.decision.status = _status_dict(self.status)
        return self.decision


Policy = Callable[[ReconcileContext], Decision | None]  # a Decision ends this round; None hands on to the next


def reconcile(
    job: JobView,
    observed: Observed,
    now: datetime,
    settings: OperatorSettings,
    progress: Progress | None = None,
) -> Decision:
    """Decide the next step for one job. Pure: no I/O, no clock, no randomness."""
    ctx = ReconcileContext(job, observed, now, settings, progress)
    for policy in POLICIES:
        decision = policy(ctx)
        if decision is not None:
            return decision
    return ctx.finish()


# -- ending a job ---------------------------------------------------------------------------------------------------


def fail_job(ctx: ReconcileContext, reason: str, message: str, policy: RunPolicy, stop_pods: bool = False) -> Decision:
    """Failed, with the reason on the Failed condition and a Warning event; `stop_pods` deletes unfinished pods."""
    ctx.status.phase = "Failed"
    ctx.status.completion_time = rfc3339(ctx.now)
    ctx.set_condition("Failed", "True", reason, message)
    ctx.set_condition("Running", "False", reason, message)
    if ctx.condition("Restarting") is not None:
        ctx.set_condition("Restarting", "False", reason, message)
    ctx.event("Warning", reason, message)
    if stop_pods:
        ctx.delete_pods([pod for pod in ctx.observed.pods if not pod.finished])
    return finish_job(ctx, policy)


def succeed_job(ctx: ReconcileContext, policy: RunPolicy, pods: list[PodView]) -> Decision:
    """Succeeded; progress is completed from the exit summary a rank wrote to its termination message."""
    ctx.status.phase = "Succeeded"
    reports = (parse_termination_record(pod.termination_message) for pod in pods)
    summary = next((report for report in reports if report and "step" in report), None)
    if summary is not None:
        ctx.status.progress = final_progress(ctx.status.progress, summary)
    ctx.status.completion_time = rfc3339(ctx.now)
    message = f"all {len(pods)} node pods succeeded"
    ctx.set_condition("Succeeded", "True", "AllNodesSucceeded", message)
    ctx.set_condition("Running", "False", "Completed", message)
    ctx.settle_restarting("Completed", message)
    ctx.event("Normal", "Succeeded", message)
    if summary is not None:
        record_export(ctx, summary)
    return finish_job(ctx, policy)


def record_export(ctx: ReconcileContext, summary: dict[str, Any]) -> None:
    """status.exportPath and an Exported event when rank 0 wrote a Hugging Face model (checkpoint.export)."""
    path = summary.get("export")
    if isinstance(path, str) and path:
        ctx.status.export_path = path
        ctx.event("Normal", "Exported", f"Hugging Face model written to {path}")


def finish_job(ctx: ReconcileContext, policy: RunPolicy) -> Decision:
    """cleanPodPolicy and ttlSecondsAfterFinished for a job that has finished."""
    pods = list(ctx.observed.pods)
    if policy.clean_pod_policy == "All":
        ctx.delete_pods(pods)
    elif policy.clean_pod_policy == "Running":
        ctx.delete_pods([pod for pod in pods if not pod.finished])
    ctx.count_pods()
    ctx.status.active = 0
    ttl, completed = policy.ttl_seconds_after_finished, parse_time(ctx.status.completion_time)
    if ttl is not None and completed is not None:
        left = (completed + timedelta(seconds=ttl) - ctx.now).total_seconds()
        if left <= 0:
            ctx.decision.delete_job = True
        else:
            ctx.decision.requeue(left)
    return ctx.finish()


def run_policy_of(raw_spec: dict[str, Any]) -> RunPolicy:
    """spec.runPolicy with its defaults (the defaults alone when it does not validate)."""
    try:
        return RunPolicy.model_validate(raw_spec.get("runPolicy") or {})
    except ValidationError:
        return RunPolicy()


def _dev_command(job: JobView, settings: OperatorSettings) -> list[str] | None:
    raw = job.annotations.get(ANNOTATION_DEV_COMMAND)
    if not (settings.allow_dev_command and raw):
        return None
    command = json.loads(raw)
    if not (isinstance(command, list) and all(isinstance(part, str) for part in command)):
        raise ValueError(f"annotation {ANNOTATION_DEV_COMMAND} must be a JSON list of strings")
    return command


# -- the policies, in the order reconcile applies them ---------------------------------------------------------------


def lost_node_policy(ctx: ReconcileContext) -> Decision | None:
    """Terminating pods that no kubelet will ever confirm deleted: on a node that stopped reporting, or still there
    well past their deletion deadline. Nothing else removes them, and the next attempt needs their names: delete the
    API objects with no grace period. A partitioned node's processes cannot rejoin: each attempt has its own
    rendezvous."""
    for pod in ctx.observed.pods:
        deadline = pod.deletion_deadline
        if deadline is None or pod.name in ctx.decision.force_deletes:
            continue
        if pod.node in ctx.observed.unreachable_nodes:
            why = f"its node {pod.node} stopped reporting"
        elif ctx.now - deadline >= LOST_POD_AFTER:
            why = f"still there {int((ctx.now - deadline).total_seconds())}s after its grace period (node {pod.node})"
        else:
            continue
        ctx.decision.force_deletes.append(pod.name)
        ctx.event("Warning", "NodeLost", f"pod {pod.name} is terminating but {why}: deleting it without waiting")
    if ctx.decision.force_deletes:
        ctx.decision.requeue(RETRY_SOON)
    return None


def terminal_policy(ctx: ReconcileContext) -> Decision | None:
    """A finished job stays finished: later pod failures and spec edits are ignored; pods are cleaned, TTL runs."""
    if ctx.status.phase not in TERMINAL_PHASES:
        return None
    return finish_job(ctx, run_policy_of(ctx.job.spec))


def spec_validation_policy(ctx: ReconcileContext) -> Decision | None:
    """A spec the schema let through but the operator cannot run fails the job once, with every error listed."""
    spec, errors = parse_spec(ctx.job.spec)
    if spec is not None:
        errors = validate_spec(spec)
    if errors or spec is None:
        message = "; ".join(str(error) for error in errors)
        return fail_job(ctx, "InvalidSpec", f"invalid spec: {message}", run_policy_of(ctx.job.spec), stop_pods=True)
    try:
        command = _dev_command(ctx.job, ctx.settings)
    except (ValueError, json.JSONDecodeError) as error:
        return fail_job(ctx, "InvalidSpec", f"invalid spec: {error}", spec.run_policy, stop_pods=True)
    spec = resolve_sharding(ctx, spec)
    ctx.accept(spec, command)
    return memory_preflight(ctx, spec)


def resolve_sharding(ctx: ReconcileContext, spec: LLMTrainingJobSpec) -> LLMTrainingJobSpec:
    """The spec with parallelism.sharding concrete, recorded in status.sharding, so every later policy (the
    trainer config, the memory estimate) sees the sharding the trainer runs. The spec's own value wins. An unset one
    is chosen (`choose_sharding`: zero2 when it fits the nodes' declared GPU memory with the estimator's margin, else
    zero3) until the job's first pods exist, and pinned from then on: a node label that changes later never flips
    it, and a job started before the operator chose (no status.sharding) keeps zero3, which it started with. ddp
    and custom-trainer jobs have no FSDP sharding: unchanged, nothing recorded."""
    if spec.custom or spec.parallelism.data_parallel != "fsdp":
        return spec
    chosen = spec.parallelism.sharding
    if chosen is None:
        if ctx.started:
            chosen = ctx.status.sharding or DEFAULT_SHARDING
        else:
            chosen = choose_sharding(spec, ctx.observed.gpu_memory_bytes)
    ctx.status.sharding = chosen
    return spec.model_copy(update={"parallelism": spec.parallelism.with_sharding(chosen)})


def memory_preflight(ctx: ReconcileContext, spec: LLMTrainingJobSpec) -> Decision | None:
    """Admission only, before the job's first pods (status.nodes is set when they are created): a GPU job whose
    estimated per-rank peak cannot fit the smallest GPU of the nodes it may land on fails with WillNotFit, naming the
    breakdown and the nearest change that fits; one that may not fit gets a Warning event. The estimate goes into
    status.memoryEstimate either way. A running job is never failed by it (a node label may change under it)."""
    if ctx.started:
        return None
    check = preflight(spec, ctx.observed.gpu_memory_bytes)
    if check is None:
        return None
    previous, ctx.status.memory_estimate = ctx.status.memory_estimate, check.estimate
    if check.error:
        return fail_job(ctx, "WillNotFit", check.error, spec.run_policy, stop_pods=True)
    if check.warning and previous != check.estimate:
        ctx.event("Warning", "MayNotFit", check.warning)
    return None


def gang_policy(ctx: ReconcileContext) -> Decision | None:
    """Resolve how the gang is placed; native placement asked for but not served fails the job before any pod."""
    try:
        ctx.gang = gang_mode(ctx.spec, ctx.settings.native_gang)
    except GangUnavailable as error:
        return fail_job(ctx, "GangSchedulingUnavailable", str(error), ctx.spec.run_policy, stop_pods=True)
    return None


def namesake_policy(ctx: ReconcileContext) -> Decision | None:
    """While a deleted job of the same name still owns the config or the Service, wait for the garbage collector.

    Pods started now would read the deleted job's config.
    """
    if ctx.observed.taken & {config_map_name(ctx.job.name), service_name(ctx.job.name)}:
        ctx.decision.requeue(RETRY_SOON)
        return ctx.finish()
    return None


def create_failure_policy(ctx: ReconcileContext) -> Decision | None:
    """A create the API server rejected (a ResourceQuota, an admission webhook, RBAC) is reported at once: the
    Created condition turns False with reason CreateFailed and the API's message, with one Warning event per
    distinct message. Creates pause for CREATE_RETRY_SECONDS, then are retried; the job proceeds once the cause is
    lifted."""
    failure = ctx.observed.create_failure
    if failure is None:
        return None
    created = ctx.condition("Created")
    if created is None or created.reason != "CreateFailed" or created.message != failure.message:
        ctx.event("Warning", "CreateFailed", failure.message)
    ctx.set_condition("Created", "False", "CreateFailed", failure.message)
    wait = (failure.at + timedelta(seconds=CREATE_RETRY_SECONDS) - ctx.now).total_seconds()
    if wait > 0:
        ctx.hold_creates = True
        ctx.decision.requeue(wait)
    return None


def config_service_policy(ctx: ReconcileContext) -> Decision | None:
    """The ConfigMap and the headless Service exist whenever the job is not finished, suspended ones included."""
    if ctx.hold_creates:
        return None
    if not ctx.observed.config_map:
        ctx.decision.creates.append(build_config_map(ctx.job.ref, ctx.spec))
    if not ctx.observed.service:
        ctx.decision.creates.append(build_service(ctx.job.ref, ctx.spec))
    return None


def suspend_policy(ctx: ReconcileContext) -> Decision | None:
    """Suspend: pods go, everything else stays; resume recreates them (this is how Kueue admits jobs)."""
    if ctx.spec.run_policy.suspend:
        return _suspend(ctx)
    if ctx.status.phase == "Suspended":
        ctx.status.phase = "Pending"
        ctx.set_condition("Suspended", "False", "Resumed", "spec.runPolicy.suspend is false")
        ctx.event("Normal", "Resumed", "job resumed: recreating node pods")
    return None


def _suspend(ctx: ReconcileContext) -> Decision:
    ctx.delete_pods(list(ctx.observed.pods))
    if ctx.status.phase != "Suspended":
        ctx.status.phase = "Suspended"
        ctx.status.start_time = None
        ctx.set_condition("Suspended", "True", "JobSuspended", "spec.runPolicy.suspend is true; node pods deleted")
        ctx.set_condition("Running", "False", "JobSuspended", "suspended")
        ctx.settle_restarting("JobSuspended", "suspended; the next attempt starts on resume")
        ctx.event("Normal", "Suspended", "job suspended: node pods deleted")
    ctx.count_pods(ctx.spec.nodes)
    if any(pod.terminating for pod in ctx.observed.pods):
        ctx.decision.requeue(RETRY_SOON)
    return ctx.finish()


def deadline_policy(ctx: ReconcileContext) -> Decision | None:
    """activeDeadlineSeconds, counted from the start of the current (unsuspended) run: fail when due, else requeue."""
    policy = ctx.spec.run_policy
    started = parse_time(ctx.status.start_time)
    if not policy.active_deadline_seconds or started is None:
        return None
    left = (started + timedelta(seconds=policy.active_deadline_seconds) - ctx.now).total_seconds()
    if left <= 0:
        message = f"job ran longer than runPolicy.activeDeadlineSeconds={policy.active_deadline_seconds}"
        return fail_job(ctx, "DeadlineExceeded", message, policy, stop_pods=True)
    ctx.decision.requeue(left)
    return None


def attempt_policy(ctx: ReconcileContext) -> Decision | None:
    """Only the current attempt's pods (attempt label == status.attempt) count; earlier attempts' pods go."""
    ctx.current = ctx.count_pods(ctx.spec.nodes)
    ctx.delete_pods([pod for pod in ctx.observed.pods if pod not in ctx.current])
    return None


def resize_policy(ctx: ReconcileContext) -> Decision | None:
    """A new size (spec.nodes or procsPerNode): the gang saves on SIGTERM and stops; the next attempt starts at the
    new size and resumes from that checkpoint (DCP reshards). Not a failure: nothing is counted."""
    status, size = ctx.status, (ctx.spec.nodes, procs_per_node(ctx.spec))
    if status.nodes is None or (status.nodes, status.procs_per_node or size[1]) == size:
        return None
    message = f"resized from {status.nodes}x{status.procs_per_node} to {size[0]}x{size[1]} (nodes x processes)"
    status.nodes, status.procs_per_node = size
    ctx.set_condition("Resized", "True", "SizeChanged", message)
    if not ctx.observed.pods:
        ctx.event("Normal", "Resized", f"{message}; the next pods start at the new size")
        return None
    ctx.event("Normal", "Resized", f"{message}; stopping the gang at a checkpoint, then resuming at the new size")
    return _next_attempt(ctx, "Resized", message)


def failure_policy(ctx: ReconcileContext) -> Decision | None:
    """Failures of the current attempt: permanent ones end the job; disruptions restart the gang without using
    backoffLimit (unless runPolicy.countDisruptions); other failures restart it within backoffLimit."""
    failures = attempt_failures(ctx)
    permanent = [failure for failure in failures if failure.kind == "permanent"]
    policy = ctx.spec.run_policy
    if permanent:
        return fail_job(ctx, permanent[0].reason, permanent[0].message, policy, stop_pods=True)
    if not failures:
        return None
    charged = [failure for failure in failures if failure.kind == "retryable" or policy.count_disruptions]
    if not charged:
        return _disruption_restart(ctx, failures[0])
    return restart_or_fail(ctx, charged[0])


def restart_or_fail(ctx: ReconcileContext, cause: Failure) -> Decision:
    """A retryable failure: restart the gang while backoffLimit allows, else fail with BackoffLimitExceeded; the
    same failure crashLoopLimit attempts in a row, with no step made in between, fails at once with CrashLoop."""
    policy = ctx.spec.run_policy
    progress = ctx.status.progress
    streak = failure_streak(ctx.status.last_failure, cause, progress.step if progress else None)
    ctx.status.last_failure = streak
    if ctx.status.restarts >= policy.backoff_limit:
        message = f"{cause.message}; backoffLimit {policy.backoff_limit} reached after {ctx.status.restarts} restarts"
        return fail_job(ctx, "BackoffLimitExceeded", message, policy, stop_pods=True)
    if policy.crash_loop_limit and cause.reason in CRASH_LOOP_REASONS and streak.count >= policy.crash_loop_limit:
        where = f"at step {streak.step}" if streak.step is not None else "before any step"
        message = f"{streak.count} attempts in a row failed the same way {where}: {cause.message}"
        return fail_job(ctx, "CrashLoop", message, policy, stop_pods=True)
    return _gang_restart(ctx, cause)


# Failures of the job's own making; a disruption (eviction, node loss) says nothing about the next attempt.
CRASH_LOOP_REASONS = frozenset({"PodFailed", "Stalled"})


def failure_streak(previous: FailureStreak | None, cause: Failure, step: int | None) -> FailureStreak:
    """The streak after `cause`: one longer when the previous attempt failed with the same reason and message at
    the same step (no progress in between), else a new streak of one."""
    same = previous is not None and (previous.reason, previous.message, previous.step) == (
        cause.reason,
        cause.message,
        step,
    )
    count = previous.count + 1 if same and previous is not None else 1
    return FailureStreak(reason=cause.reason, message=cause.message, step=step, count=count)


def attempt_failures(ctx: ReconcileContext) -> list[Failure]:
    """Failed, lost or disrupted pods by rank, then ranks whose pod vanished while the job was Running."""
    broken = sorted(
        (
            pod
            for pod in ctx.current
            if (not pod.terminating and pod.phase in ("Failed", "Unknown")) or (pod.terminating and pod.disrupted)
        ),
        key=lambda pod: pod.rank,
    )
    failures = [classify_failure(pod) for pod in broken]
    if ctx.status.phase == "Running":
        present = {pod.rank for pod in ctx.current}
        failures += [
            Failure("disruption", "PodLost", f"node {rank} ({pod_name(ctx.job.name, rank)}) disappeared while running")
            for rank in range(ctx.spec.nodes)
            if rank not in present
        ]
    return failures


def _gang_restart(ctx: ReconcileContext, cause: Failure) -> Decision:
    """A failure: the next attempt, counted against backoffLimit."""
    ctx.status.restarts += 1
    message = f"gang restart {ctx.status.restarts}/{ctx.spec.run_policy.backoff_limit}: {cause.message}"
    ctx.event("Normal", "GangRestart", message)
    ctx.set_condition("Restarting", "True", cause.reason, message)
    return _next_attempt(ctx, "GangRestart", message)


def _disruption_restart(ctx: ReconcileContext, cause: Failure) -> Decision:
    """Eviction, preemption, drain or node loss: the next attempt resumes from the checkpoint, not counted."""
    ctx.status.disruptions += 1
    message = f"disruption {ctx.status.disruptions} (not counted against backoffLimit): {cause.message}"
    ctx.event("Normal", "Disrupted", message)
    ctx.set_condition("Restarting", "True", cause.reason, message)
    return _next_attempt(ctx, "Disrupted", message)


def _next_attempt(ctx: ReconcileContext, reason: str, message: str) -> Decision:
    """Every pod of this attempt goes (SIGTERM: the trainer saves), with its PodGroup; pod_creation_policy starts
    the next attempt once the names are free."""
    status = ctx.status
    if status.gang == "native":
        ctx.decision.deletes.append(("PodGroup", pod_group_name(ctx.job.name, status.attempt)))
    status.attempt += 1
    status.phase = "Restarting"
    ctx.set_condition("Running", "False", reason, message)
    ctx.delete_pods(list(ctx.observed.pods))
    ctx.count_pods(ctx.spec.nodes)
    ctx.decision.requeue(RETRY_SOON)
    return ctx.finish()


def success_policy(ctx: ReconcileContext) -> Decision | None:
    """The job succeeds when every node pod of the current attempt has succeeded (one alone is not enough)."""
    current = ctx.current
    if len(current) == ctx.spec.nodes and all(pod.phase == "Succeeded" for pod in current):
        return succeed_job(ctx, ctx.spec.run_policy, current)
    return None


def _report_progress_unavailable(ctx: ReconcileContext, unreachable: MetricsUnreachable, timeout: int) -> None:
    """Unreadable metrics are not a stall: once they have been unreadable for the grace, say so (Progressing=
    Unknown, one Warning) instead of restarting a gang that may be training fine."""
    grace = min(METRICS_GRACE_SECONDS, timeout or METRICS_GRACE_SECONDS)
    left = (unreachable.since + timedelta(seconds=grace) - ctx.now).total_seconds()
    if left > 0:
        ctx.decision.requeue(left)
        return
    message = f"rank 0's metrics cannot be read, so stalls go undetected: {unreachable.message}"
    progressing = ctx.condition("Progressing")
    if progressing is None or progressing.reason != "ProgressUnavailable":
        ctx.event("Warning", "ProgressUnavailable", message)
    ctx.set_condition("Progressing", "Unknown", "ProgressUnavailable", message)


def stall_policy(ctx: ReconcileContext) -> Decision | None:
    """A Running gang whose rank 0 has not advanced a step for stallTimeoutSeconds is hung (a deadlocked
    collective, a wedged filesystem): restart it (reason Stalled, counted against backoffLimit) with a Warning that
    names the last step. The clock starts at the later of the last step change and the gang's start, so a new
    attempt gets the full timeout. Unreadable metrics are not a stall: once they have been unreadable for
    METRICS_GRACE_SECONDS (or the stall timeout, if shorter), Progressing=Unknown says so instead."""
    if ctx.status.phase != "Running" or len([pod for pod in ctx.live if pod.phase == "Running"]) != ctx.spec.nodes:
        return None
    timeout = ctx.spec.run_policy.stall_timeout_seconds
    unreachable = ctx.observed.metrics_unreachable
    if unreachable is not None:
        _report_progress_unavailable(ctx, unreachable, timeout)
        return None
    progress = ctx.status.progress
    if progress is not None and progress.step is not None:
        ctx.set_condition("Progressing", "True", "StepAdvancing", "rank 0 reports its step")
    running = ctx.condition("Running")
    since = [parse_time(progress.last_step_time if progress else None)]
    since.append(parse_time(running.last_transition_time) if running and running.status == "True" else None)
    clock = max((when for when in since if when is not None), default=None)
    if not timeout or clock is None:
        return None
    left = (clock + timedelta(seconds=timeout) - ctx.now).total_seconds()
    if left > 0:
        ctx.decision.requeue(left)
        return None
    if progress is not None and progress.step is not None:
        message = f"no step in {timeout}s: rank 0 last reported step {progress.step} at {progress.last_step_time}"
    else:
        message = f"no step in {timeout}s since the gang started running"
    ctx.event("Warning", "Stalled", message)
    ctx.set_condition("Progressing", "False", "Stalled", message)
    return restart_or_fail(ctx, Failure("retryable", "Stalled", message))


def pod_creation_policy(ctx: ReconcileContext) -> Decision | None:
    """Create the missing node pods of this attempt once their names are free (requeue while they are not).

    Status counts only pods that exist: the pods created here are counted by the next reconcile, and the Created
    condition turns True once every node pod of the attempt exists.
    """
    status, nodes = ctx.status, ctx.spec.nodes
    taken = {pod.name for pod in ctx.observed.pods} | ctx.observed.taken
    present = {pod.rank for pod in ctx.current}
    missing = [rank for rank in range(nodes) if rank not in present]
    created = ctx.condition("Created")
    first_pods = created is None and status.phase == "Pending"
    if not missing and (first_pods or (created is not None and created.status != "True")):
        message = f"created config, service and {nodes} node pods (gang placement: {status.gang or ctx.gang}"
        message += f", FSDP sharding {status.sharding})" if status.sharding else ")"
        ctx.set_condition("Created", "True", "ChildrenCreated", message)
        ctx.event("Normal", "Created", message)
    if ctx.hold_creates:
        return None
    creatable = [rank for rank in missing if pod_name(ctx.job.name, rank) not in taken]
    if creatable:
        _rerender_config(ctx)
        _start_attempt(ctx)
    for rank in creatable:
        pod = build_pod(ctx.job.ref, ctx.spec, rank, status.attempt, ctx.settings.default_image, ctx.command)
        ctx.decision.creates.append(place_in_gang(pod, ctx.gang, ctx.job.ref, nodes, status.attempt))
    if creatable and status.start_time is None:
        status.start_time = rfc3339(ctx.now)
    if len(creatable) < len(missing) or any(pod.terminating for pod in ctx.observed.pods):
        ctx.decision.requeue(RETRY_SOON)
    return None


def _start_attempt(ctx: ReconcileContext) -> None:
    """Record the size and gang placement the attempt's pods get; a native gang gets its PodGroup first."""
    status = ctx.status
    status.nodes, status.procs_per_node, status.gang = ctx.spec.nodes, procs_per_node(ctx.spec), ctx.gang
    if ctx.gang == "native":
        ctx.decision.creates.append(build_pod_group(ctx.job.ref, ctx.spec.nodes, status.attempt))


def _rerender_config(ctx: ReconcileContext) -> None:
    """A new attempt (first pods, gang restart, resume) trains on the spec as it is now, edits included."""
    if ctx.observed.config is None:
        return  # not read this round: the ConfigMap is being created with this spec, or pods exist already
    desired = build_config_map(ctx.job.ref, ctx.spec)
    if desired["data"] != ctx.observed.config:
        ctx.decision.updates.append(desired)
        ctx.event("Normal", "ConfigUpdated", "trainer config re-rendered from the edited spec for the new pods")


def queue_policy(ctx: ReconcileContext) -> Decision | None:
    """Pods held by Kueue's gate or waiting for capacity: condition Queued (reason, the scheduler's or queue's
    message) at once, not after the startup timeout; it turns False when every pod is placed."""
    waiting = [pod for pod in ctx.live if pod.phase == "Pending" and (pod.gated or pod.unschedulable)]
    queued = ctx.condition("Queued")
    if not waiting:
        if queued is not None and queued.status == "True" and len(ctx.live) == ctx.spec.nodes:
            ctx.set_condition("Queued", "False", "Admitted", "every node pod is placed")
        return None
    reason, detail = pending_reason(min(waiting, key=lambda pod: pod.rank))
    reason = "WaitingForCapacity" if reason == "Unschedulable" else reason
    message = f"{len(waiting)} of {ctx.spec.nodes} node pods waiting; {detail}"
    if queued is None or queued.status != "True" or queued.reason != reason:
        ctx.event("Normal", reason, message)
    ctx.set_condition("Queued", "True", reason, message)
    return None


def running_policy(ctx: ReconcileContext) -> Decision | None:
    """Every node pod Running makes the job Running (and ends a gang restart); nothing else to check then."""
    nodes = ctx.spec.nodes
    if len([pod for pod in ctx.live if pod.phase == "Running"]) != nodes:
        return None
    status = ctx.status
    message = _running_message(ctx, nodes)
    if status.phase != "Running":
        if status.phase == "Restarting":
            ctx.set_condition("Restarting", "False", "Recovered", f"gang restarted {status.restarts} times")
        status.phase = "Running"
        ctx.set_condition("Running", "True", "AllNodesRunning", message)
        ctx.event("Normal", "Running", message)
    elif ctx.spec.custom:  # the note on missing progress comes and goes with the script's reports
        ctx.set_condition("Running", "True", "AllNodesRunning", message)
    return ctx.finish()


def _running_message(ctx: ReconcileContext, nodes: int) -> str:
    """A custom script may report no progress: say so, and what depends on it (docs/custom-trainer.md)."""
    message = f"all {nodes} node pods running"
    if ctx.spec.custom and ctx.status.progress is None:
        message += (
            f"; no progress reported on port {ctx.spec.metrics.port} (llmtrain_step): status.progress, ETA and "
            "kubectl get ltj's Step/Loss stay empty; see docs/custom-trainer.md"
        )
    return message


def startup_policy(ctx: ReconcileContext) -> Decision | None:
    """Pods Pending past the startup timeout get a condition message (and one Warning event) saying why."""
    timeout_seconds = ctx.spec.run_policy.startup_timeout_seconds
    timeout = timedelta(seconds=timeout_seconds)
    late: list[PodView] = []
    for pod in ctx.live:
        if pod.phase != "Pending" or pod.created is None:
            continue
        overdue = ctx.now - (pod.created + timeout)
        if overdue.total_seconds() >= 0:
            late.append(pod)
        else:
            ctx.decision.requeue(math.ceil(-overdue.total_seconds()))
    if not late:
        return None
    reason, message = pending_reason(min(late, key=lambda pod: pod.rank))
    message = f"{len(late)} node pod(s) Pending over {timeout_seconds}s; {message}"
    running = ctx.condition("Running")
    if running is None or running.reason != reason or running.message != message:
        ctx.event("Warning", reason, message)
    ctx.set_condition("Running", "False", reason, message)
    return None


POLICIES: tuple[Policy, ...] = (
    lost_node_policy,
    terminal_policy,
    spec_validation_policy,
    gang_policy,
    namesake_policy,
    create_failure_policy,
    config_service_policy,
    suspend_policy,
    deadline_policy,
    attempt_policy,
    resize_policy,
    failure_policy,
    success_policy,
    stall_policy,
    pod_creation_policy,
    queue_policy,
    running_policy,
    startup_policy,
)
