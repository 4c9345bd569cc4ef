"""The operator's brain: a pure function from (job, observed children, now) to what to do next.

Level-triggered and idempotent: the same inputs give the same Decision, and applying a Decision twice is harmless
(creates use deterministic names, deletes tolerate NotFound). Status is written *before* children are touched, and
node pods carry the restart attempt they belong to (label llmtrain.dev/attempt == status.restarts), so an operator
killed between the two steps finds stale pods on restart and deletes them instead of counting a failure twice.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from .api import TERMINAL_PHASES, Condition, LLMTrainingJobSpec, LLMTrainingJobStatus, Progress, RunPolicy
from .builders import JobRef, build_config_map, build_pod, build_service
from .constants import ANNOTATION_DEV_COMMAND, config_map_name, pod_name, service_name
from .observe import Failure, PodView, classify_failure, parse_time, pending_reason, trainer_report
from .progress import final_progress
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


def rfc3339(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _load_status(raw: dict[str, Any]) -> LLMTrainingJobStatus:
    try:
        return LLMTrainingJobStatus.model_validate(raw)
    except ValidationError:
        return LLMTrainingJobStatus()  # a hand-edited status is rebuilt rather than trusted


def _dump(status: LLMTrainingJobStatus) -> dict[str, Any]:
    return status.model_dump(by_alias=True, exclude_none=True)


class _Run:
    """Mutable working state of one reconcile call; the public entry point is `reconcile`."""

    def __init__(self, job: JobView, observed: Observed, now: datetime, settings: OperatorSettings) -> None:
        self.job, self.observed, self.now, self.settings = job, observed, now, settings
        self.old = _load_status(job.status)
        self.st = self.old.model_copy(deep=True)
        self.st.phase = self.st.phase or "Pending"
        self.st.observed_generation = job.generation
        self.decision = Decision(status={}, old_status=_dump(self.old) if job.status else {})

    # -- helpers ------------------------------------------------------------------------------------------------
    def condition(self, type_: str, status: str, reason: str, message: str = "") -> None:
        conds = self.st.conditions
        for i, c in enumerate(conds):
            if c.type == type_:
                when = c.last_transition_time if c.status == status else rfc3339(self.now)
                conds[i] = Condition(
                    type=type_, status=status, reason=reason, message=message, last_transition_time=when
                )
                return
        conds.append(
            Condition(type=type_, status=status, reason=reason, message=message, last_transition_time=rfc3339(self.now))
        )

    def settle_restarting(self, reason: str, message: str) -> None:
        """A restart in progress ends when the job succeeds or is suspended, not only when pods run again."""
        restarting = self.get_condition("Restarting")
        if restarting is not None and restarting.status == "True":
            self.condition("Restarting", "False", reason, message)

    def get_condition(self, type_: str) -> Condition | None:
        return next((c for c in self.st.conditions if c.type == type_), None)

    def event(self, type_: str, reason: str, message: str) -> None:
        self.decision.events.append(Event(type_, reason, message))

    def delete_pods(self, pods: list[PodView]) -> None:
        for p in pods:
            if not p.terminating and ("Pod", p.name) not in self.decision.deletes:
                self.decision.deletes.append(("Pod", p.name))

    def finish(self) -> Decision:
        self.decision.status = _dump(self.st)
        return self.decision

    def count(self, nodes: int | None = None) -> list[PodView]:
        """Update the node counts from the current attempt's pods (ranks below `nodes`), and return those pods."""
        current = [
            p
            for p in self.observed.pods
            if p.attempt == self.st.restarts and p.rank >= 0 and (nodes is None or p.rank < nodes)
        ]
        self.st.active = sum(1 for p in current if not p.finished and not p.terminating)
        self.st.ready = sum(1 for p in current if p.ready and not p.terminating)
        self.st.succeeded = sum(1 for p in current if p.phase == "Succeeded")
        self.st.failed = sum(1 for p in current if p.phase == "Failed")
        return current

    # -- terminal -----------------------------------------------------------------------------------------------
    def fail(self, reason: str, message: str, policy: RunPolicy, kill_all: bool = False) -> Decision:
        self.st.phase = "Failed"
        self.st.completion_time = rfc3339(self.now)
        self.condition("Failed", "True", reason, message)
        self.condition("Running", "False", reason, message)
        if self.get_condition("Restarting"):
            self.condition("Restarting", "False", reason, message)
        self.event("Warning", reason, message)
        if kill_all:
            self.delete_pods([p for p in self.observed.pods if not p.finished])
        return self.terminal(policy)

    def succeed(self, policy: RunPolicy, nodes: int, pods: list[PodView]) -> Decision:
        self.st.phase = "Succeeded"
        summary = next((r for p in pods if (r := trainer_report(p.termination_message)) and "step" in r), None)
        if summary is not None:
            self.st.progress = final_progress(self.st.progress, summary)
        self.st.completion_time = rfc3339(self.now)
        message = f"all {nodes} node pods succeeded"
        self.condition("Succeeded", "True", "AllNodesSucceeded", message)
        self.condition("Running", "False", "Completed", message)
        self.settle_restarting("Completed", message)
        self.event("Normal", "Succeeded", message)
        return self.terminal(policy)

    def terminal(self, policy: RunPolicy) -> Decision:
        """cleanPodPolicy and ttlSecondsAfterFinished for a job that has finished."""
        pods = list(self.observed.pods)
        if policy.clean_pod_policy == "All":
            self.delete_pods(pods)
        elif policy.clean_pod_policy == "Running":
            self.delete_pods([p for p in pods if not p.finished])
        self.count()
        self.st.active = 0
        ttl, done = policy.ttl_seconds_after_finished, parse_time(self.st.completion_time)
        if ttl is not None and done is not None:
            left = (done + timedelta(seconds=ttl) - self.now).total_seconds()
            if left <= 0:
                self.decision.delete_job = True
            else:
                self.decision.requeue(left)
        return self.finish()


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
    if not (isinstance(command, list) and all(isinstance(c, str) for c in command)):
        raise ValueError(f"annotation {ANNOTATION_DEV_COMMAND} must be a JSON list of strings")
    return command


def reconcile(
    job: JobView,
    observed: Observed,
    now: datetime,
    settings: OperatorSettings,
    progress: Progress | None = None,
) -> Decision:
    """Decide the next step for one job. Pure: no I/O, no clock, no randomness."""
    run = _Run(job, observed, now, settings)
    if progress is not None:
        run.st.progress = progress

    if run.st.phase in TERMINAL_PHASES:
        return run.terminal(_run_policy(job.spec))

    spec, errors = parse_spec(job.spec)
    if spec is not None:
        errors = validate_spec(spec)
    if errors or spec is None:
        message = "; ".join(str(e) for e in errors)
        return run.fail("InvalidSpec", f"invalid spec: {message}", _run_policy(job.spec), kill_all=True)
    try:
        command = _dev_command(job, settings)
    except (ValueError, json.JSONDecodeError) as e:
        return run.fail("InvalidSpec", f"invalid spec: {e}", spec.run_policy, kill_all=True)
    return _reconcile_active(run, spec, command)


def _reconcile_active(run: _Run, spec: LLMTrainingJobSpec, command: list[str] | None) -> Decision:
    job, observed, now, st, decision = run.job, run.observed, run.now, run.st, run.decision
    policy, nodes = spec.run_policy, spec.nodes

    if observed.taken & {config_map_name(job.name), service_name(job.name)}:
        # A deleted job of the same name still owns the config or the Service: pods started now would read its
        # config. Wait for the garbage collector.
        decision.requeue(RETRY_SOON)
        return run.finish()
    if not observed.config_map:
        decision.creates.append(build_config_map(job.ref, spec))
    if not observed.service:
        decision.creates.append(build_service(job.ref, spec))

    # Suspend: pods go, everything else stays; resume recreates them (this is how Kueue admits jobs).
    if policy.suspend:
        run.delete_pods(list(observed.pods))
        if st.phase != "Suspended":
            st.phase = "Suspended"
            st.start_time = None
            run.condition("Suspended", "True", "JobSuspended", "spec.runPolicy.suspend is true; node pods deleted")
            run.condition("Running", "False", "JobSuspended", "suspended")
            run.settle_restarting("JobSuspended", "suspended; the next attempt starts on resume")
            run.event("Normal", "Suspended", "job suspended: node pods deleted")
        run.count(nodes)
        if any(p.terminating for p in observed.pods):
            decision.requeue(RETRY_SOON)
        return run.finish()
    if st.phase == "Suspended":
        st.phase = "Pending"
        run.condition("Suspended", "False", "Resumed", "spec.runPolicy.suspend is false")
        run.event("Normal", "Resumed", "job resumed: recreating node pods")

    # Deadline: counted from the start of the current (unsuspended) run.
    started = parse_time(st.start_time)
    if policy.active_deadline_seconds and started is not None:
        left = (started + timedelta(seconds=policy.active_deadline_seconds) - now).total_seconds()
        if left <= 0:
            message = f"job ran longer than runPolicy.activeDeadlineSeconds={policy.active_deadline_seconds}"
            return run.fail("DeadlineExceeded", message, policy, kill_all=True)
        decision.requeue(left)

    current = run.count(nodes)
    stale = [p for p in observed.pods if p not in current]
    run.delete_pods(stale)
    live = [p for p in current if not p.terminating]

    # Failures of the current attempt: permanent ones end the job, others restart the whole gang.
    broken = sorted((p for p in live if p.phase in ("Failed", "Unknown")), key=lambda p: p.rank)
    failures = [classify_failure(p) for p in broken]
    present = {p.rank for p in current}
    if st.phase == "Running":
        failures += [
            Failure("retryable", "PodLost", f"node {r} ({pod_name(job.name, r)}) disappeared while running")
            for r in range(nodes)
            if r not in present
        ]
    permanent = [f for f in failures if f.kind == "permanent"]
    if permanent:
        return run.fail(permanent[0].reason, permanent[0].message, policy, kill_all=True)
    if failures:
        first = failures[0]
        if st.restarts >= policy.backoff_limit:
            message = f"{first.message}; backoffLimit {policy.backoff_limit} reached after {st.restarts} restarts"
            return run.fail("BackoffLimitExceeded", message, policy, kill_all=True)
        st.restarts += 1
        st.phase = "Restarting"
        message = f"gang restart {st.restarts}/{policy.backoff_limit}: {first.message}"
        run.condition("Restarting", "True", first.reason, message)
        run.condition("Running", "False", "GangRestart", message)
        run.event("Normal", "GangRestart", message)
        run.delete_pods(list(observed.pods))
        run.count(nodes)
        decision.requeue(RETRY_SOON)
        return run.finish()

    if len(current) == nodes and all(p.phase == "Succeeded" for p in current):
        return run.succeed(policy, nodes, current)

    # Create the missing node pods of this attempt once their names are free.
    taken = {p.name for p in observed.pods} | observed.taken
    missing = [r for r in range(nodes) if r not in present]
    creatable = [r for r in missing if pod_name(job.name, r) not in taken]
    if creatable and observed.config is not None:
        # A new attempt (first pods, gang restart, resume) trains on the spec as it is now, edits included.
        desired = build_config_map(job.ref, spec)
        if desired["data"] != observed.config:
            decision.updates.append(desired)
            run.event("Normal", "ConfigUpdated", "trainer config re-rendered from the edited spec for the new pods")
    for rank in creatable:
        decision.creates.append(build_pod(job.ref, spec, rank, st.restarts, run.settings.default_image, command))
    st.active += len(creatable)  # count them now, so this decision's status write is not followed by another
    if creatable and st.start_time is None:
        st.start_time = rfc3339(now)
    if len(creatable) < len(missing) or any(p.terminating for p in observed.pods):
        decision.requeue(RETRY_SOON)
    created = run.get_condition("Created")
    if creatable and (created is None or created.status != "True"):
        message = f"created config, service and {nodes} node pods"
        run.condition("Created", "True", "ChildrenCreated", message)
        run.event("Normal", "Created", message)

    running = [p for p in live if p.phase == "Running"]
    if len(running) == nodes:
        if st.phase != "Running":
            message = f"all {nodes} node pods running"
            if st.phase == "Restarting":
                run.condition("Restarting", "False", "Recovered", f"gang restarted {st.restarts} times")
            st.phase = "Running"
            run.condition("Running", "True", "AllNodesRunning", message)
            run.event("Normal", "Running", message)
        return run.finish()

    _diagnose_pending(run, live, policy)
    return run.finish()


def _diagnose_pending(run: _Run, live: list[PodView], policy: RunPolicy) -> None:
    """Pods Pending past the startup timeout get a condition message (and one Warning event) saying why."""
    timeout = timedelta(seconds=policy.startup_timeout_seconds)
    late: list[PodView] = []
    for p in live:
        if p.phase != "Pending" or p.created is None:
            continue
        overdue = run.now - (p.created + timeout)
        if overdue.total_seconds() >= 0:
            late.append(p)
        else:
            run.decision.requeue(math.ceil(-overdue.total_seconds()))
    if not late:
        return
    reason, message = pending_reason(sorted(late, key=lambda p: p.rank)[0])
    message = f"{len(late)} node pod(s) Pending over {policy.startup_timeout_seconds}s; {message}"
    old = run.get_condition("Running")
    if old is None or old.reason != reason or old.message != message:
        run.event("Warning", reason, message)
    run.condition("Running", "False", reason, message)
