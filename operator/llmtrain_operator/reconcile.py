"""The operator's brain: a pure function from (job, observed children, now, settings) to what to do next.

Level-triggered and idempotent: the same inputs give the same Decision, and applying a Decision twice is harmless
(creates use deterministic names, deletes tolerate NotFound). Status is written *before* children are touched, and
node pods carry the restart attempt they belong to (label llmtrain.dev/attempt == status.restarts), so an operator
killed between the two steps finds stale pods on restart and deletes them instead of counting a failure twice.

`reconcile` runs the named policies of POLICIES in order over one ReconcileContext; the first policy that settles
the job's state for this round returns the Decision, later ones never see it:

    terminal_policy          a Failed/Succeeded job: cleanPodPolicy, then ttlSecondsAfterFinished
    spec_validation_policy   an invalid spec (or dev-command annotation) fails the job with InvalidSpec
    namesake_policy          wait while a deleted job of the same name still holds the config or Service name
    config_service_policy    create the ConfigMap and Service when missing
    suspend_policy           suspend deletes the pods and stops there; resume returns the job to Pending
    deadline_policy          runPolicy.activeDeadlineSeconds, counted from the current run's start
    attempt_policy           count the current attempt's pods; delete pods of earlier attempts
    failure_policy           permanent exit -> Failed; retryable (exit, eviction, node loss) -> gang restart
                             within backoffLimit, else BackoffLimitExceeded
    success_policy           every node pod Succeeded -> Succeeded, with rank 0's final progress
    pod_creation_policy      create the attempt's missing pods once their names are free (config re-rendered)
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

from pydantic import ValidationError

from .api import TERMINAL_PHASES, Condition, LLMTrainingJobSpec, LLMTrainingJobStatus, Progress, RunPolicy
from .builders import JobRef, build_config_map, build_pod, build_service
from .constants import ANNOTATION_DEV_COMMAND, config_map_name, pod_name, service_name
from .observe import Failure, PodView, classify_failure, pending_reason, trainer_report
from .progress import final_progress
from .timestamps import parse_time, rfc3339
from .validate import parse_spec, validate_spec

RETRY_SOON = 1.0  # seconds; while pods terminate or names are still taken


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
class Observed:
    """Children that exist now (pods of any attempt, including terminating ones)."""

    pods: tuple[PodView, ...] = ()
    config_map: bool = False
    service: bool = False
    # Names still held by children of a deleted job of the same name, waiting for garbage collection.
    taken: frozenset[str] = frozenset()
    # The ConfigMap's data when it was read for this reconcile (before a new attempt's pods), else None.
    config: dict[str, str] | None = None


@dataclass(frozen=True)
class OperatorSettings:
    default_image: str
    allow_dev_command: bool = False  # test hook: honour the llmtrain.dev/dev-command annotation


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
        if progress is not None:
            self.status.progress = progress
        self.decision = Decision(status={}, old_status=_status_dict(stored) if job.status else {})
        self._spec: LLMTrainingJobSpec | None = None
        self.command: list[str] | None = None  # the dev-command annotation, when the operator honours it
        self.current: list[PodView] = []  # this attempt's node pods, set by attempt_policy

    # -- the accepted spec ---------------------------------------------------------------------------------------
    def accept(self, spec: LLMTrainingJobSpec, command: list[str] | None) -> None:
        self._spec, self.command = spec, command

    @property
    def spec(self) -> LLMTrainingJobSpec:
        if self._spec is None:
            raise RuntimeError("the spec is read before spec_validation_policy accepted it")
        return self._spec

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
            if pod.attempt == self.status.restarts and pod.rank >= 0 and (nodes is None or pod.rank < nodes)
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
    reports = (trainer_report(pod.termination_message) for pod in pods)
    summary = next((report for report in reports if report and "step" in report), None)
    if summary is not None:
        ctx.status.progress = final_progress(ctx.status.progress, summary)
    ctx.status.completion_time = rfc3339(ctx.now)
    message = f"all {len(pods)} node pods succeeded"
    ctx.set_condition("Succeeded", "True", "AllNodesSucceeded", message)
    ctx.set_condition("Running", "False", "Completed", message)
    ctx.settle_restarting("Completed", message)
    ctx.event("Normal", "Succeeded", message)
    return finish_job(ctx, policy)


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


def _run_policy(raw_spec: dict[str, Any]) -> RunPolicy:
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


def terminal_policy(ctx: ReconcileContext) -> Decision | None:
    """A finished job stays finished: later pod failures and spec edits are ignored; pods are cleaned, TTL runs."""
    if ctx.status.phase not in TERMINAL_PHASES:
        return None
    return finish_job(ctx, _run_policy(ctx.job.spec))


def spec_validation_policy(ctx: ReconcileContext) -> Decision | None:
    """A spec the schema let through but the operator cannot run fails the job once, with every error listed."""
    spec, errors = parse_spec(ctx.job.spec)
    if spec is not None:
        errors = validate_spec(spec)
    if errors or spec is None:
        message = "; ".join(str(error) for error in errors)
        return fail_job(ctx, "InvalidSpec", f"invalid spec: {message}", _run_policy(ctx.job.spec), stop_pods=True)
    try:
        command = _dev_command(ctx.job, ctx.settings)
    except (ValueError, json.JSONDecodeError) as error:
        return fail_job(ctx, "InvalidSpec", f"invalid spec: {error}", spec.run_policy, stop_pods=True)
    ctx.accept(spec, command)
    return None


def namesake_policy(ctx: ReconcileContext) -> Decision | None:
    """While a deleted job of the same name still owns the config or the Service, wait for the garbage collector.

    Pods started now would read the deleted job's config.
    """
    if ctx.observed.taken & {config_map_name(ctx.job.name), service_name(ctx.job.name)}:
        ctx.decision.requeue(RETRY_SOON)
        return ctx.finish()
    return None


def config_service_policy(ctx: ReconcileContext) -> Decision | None:
    """The ConfigMap and the headless Service exist whenever the job is not finished, suspended ones included."""
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
    """Only the current attempt's pods (attempt label == status.restarts) count; earlier attempts' pods go."""
    ctx.current = ctx.count_pods(ctx.spec.nodes)
    ctx.delete_pods([pod for pod in ctx.observed.pods if pod not in ctx.current])
    return None


def failure_policy(ctx: ReconcileContext) -> Decision | None:
    """Failures of the current attempt: permanent ones end the job, others restart the whole gang."""
    failures = attempt_failures(ctx)
    permanent = [failure for failure in failures if failure.kind == "permanent"]
    policy = ctx.spec.run_policy
    if permanent:
        return fail_job(ctx, permanent[0].reason, permanent[0].message, policy, stop_pods=True)
    if not failures:
        return None
    first = failures[0]
    if ctx.status.restarts >= policy.backoff_limit:
        message = f"{first.message}; backoffLimit {policy.backoff_limit} reached after {ctx.status.restarts} restarts"
        return fail_job(ctx, "BackoffLimitExceeded", message, policy, stop_pods=True)
    return _gang_restart(ctx, first)


def attempt_failures(ctx: ReconcileContext) -> list[Failure]:
    """Failed or lost pods by rank, then ranks whose pod vanished while the job was Running."""
    broken = sorted((pod for pod in ctx.live if pod.phase in ("Failed", "Unknown")), key=lambda pod: pod.rank)
    failures = [classify_failure(pod) for pod in broken]
    if ctx.status.phase == "Running":
        present = {pod.rank for pod in ctx.current}
        failures += [
            Failure("retryable", "PodLost", f"node {rank} ({pod_name(ctx.job.name, rank)}) disappeared while running")
            for rank in range(ctx.spec.nodes)
            if rank not in present
        ]
    return failures


def _gang_restart(ctx: ReconcileContext, cause: Failure) -> Decision:
    """Start the next attempt: every pod goes; pod_creation_policy recreates them once their names are free."""
    ctx.status.restarts += 1
    ctx.status.phase = "Restarting"
    message = f"gang restart {ctx.status.restarts}/{ctx.spec.run_policy.backoff_limit}: {cause.message}"
    ctx.set_condition("Restarting", "True", cause.reason, message)
    ctx.set_condition("Running", "False", "GangRestart", message)
    ctx.event("Normal", "GangRestart", message)
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


def pod_creation_policy(ctx: ReconcileContext) -> Decision | None:
    """Create the missing node pods of this attempt once their names are free (requeue while they are not)."""
    status, nodes = ctx.status, ctx.spec.nodes
    taken = {pod.name for pod in ctx.observed.pods} | ctx.observed.taken
    present = {pod.rank for pod in ctx.current}
    missing = [rank for rank in range(nodes) if rank not in present]
    creatable = [rank for rank in missing if pod_name(ctx.job.name, rank) not in taken]
    if creatable:
        _rerender_config(ctx)
    for rank in creatable:
        pod = build_pod(ctx.job.ref, ctx.spec, rank, status.restarts, ctx.settings.default_image, ctx.command)
        ctx.decision.creates.append(pod)
    status.active += len(creatable)  # count them now, so this decision's status write is not followed by another
    if creatable and status.start_time is None:
        status.start_time = rfc3339(ctx.now)
    if len(creatable) < len(missing) or any(pod.terminating for pod in ctx.observed.pods):
        ctx.decision.requeue(RETRY_SOON)
    created = ctx.condition("Created")
    if creatable and (created is None or created.status != "True"):
        message = f"created config, service and {nodes} node pods"
        ctx.set_condition("Created", "True", "ChildrenCreated", message)
        ctx.event("Normal", "Created", message)
    return None


def _rerender_config(ctx: ReconcileContext) -> None:
    """A new attempt (first pods, gang restart, resume) trains on the spec as it is now, edits included."""
    if ctx.observed.config is None:
        return  # not read this round: the ConfigMap is being created with this spec, or pods exist already
    desired = build_config_map(ctx.job.ref, ctx.spec)
    if desired["data"] != ctx.observed.config:
        ctx.decision.updates.append(desired)
        ctx.event("Normal", "ConfigUpdated", "trainer config re-rendered from the edited spec for the new pods")


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
    terminal_policy,
    spec_validation_policy,
    namesake_policy,
    config_service_policy,
    suspend_policy,
    deadline_policy,
    attempt_policy,
    failure_policy,
    success_policy,
    pod_creation_policy,
    running_policy,
    startup_policy,
)
