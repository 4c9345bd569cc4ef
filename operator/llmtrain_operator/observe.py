"""What the operator needs to know about a node pod, extracted from its manifest by pure functions.

The handlers keep one PodView per pod in a kopf index (small, and the reconcile input); `classify_failure` decides
whether a failed pod is worth a gang restart, following the exit-code contract (llmtrain_contract.exit_codes).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from llmtrain_contract.exit_codes import PERMANENT_EXIT_CODES, parse_termination_record

from .constants import KIND, LABEL_ATTEMPT, LABEL_RANK
from .timestamps import parse_time

# Pod-level reasons for a pod that failed through no fault of its own: restart the gang elsewhere.
DISRUPTION_REASONS = {"Evicted", "NodeLost", "Preempting", "Shutdown", "Terminated", "NodeShutdown", "OutOfpods"}
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"
SCHEDULING_GATED = "SchedulingGated"  # PodScheduled=False reason while a scheduling gate (e.g. Kueue's) holds the pod


@dataclass(frozen=True)
class PodView:
    name: str
    rank: int
    attempt: int
    phase: str  # Pending, Running, Succeeded, Failed, Unknown
    terminating: bool = False
    ready: bool = False
    created: datetime | None = None
    ip: str | None = None
    reason: str | None = None  # pod.status.reason, e.g. Evicted
    message: str | None = None
    exit_code: int | None = None
    termination_message: str | None = None
    waiting_reason: str | None = None  # e.g. ImagePullBackOff
    waiting_message: str | None = None
    unschedulable: str | None = None  # PodScheduled=False message (reason Unschedulable)
    gated: bool = False  # held by a scheduling gate (Kueue's admission gate)
    disrupted: bool = False  # DisruptionTarget condition (eviction, preemption, node drain)
    disruption: str | None = None  # that condition's "Reason: message", e.g. EvictionByEvictionAPI
    owner_uid: str | None = None  # the controlling LLMTrainingJob's uid
    node: str | None = None  # spec.nodeName once bound
    deletion_deadline: datetime | None = None  # metadata.deletionTimestamp: when the kubelet must have stopped it

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


def pod_view(body: dict[str, Any]) -> PodView:
    """Summarise a pod manifest (as served by the API) into a PodView."""
    meta, status = body.get("metadata", {}), body.get("status") or {}
    labels = meta.get("labels") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    scheduled = conditions.get("PodScheduled", {})
    container = next(iter(status.get("containerStatuses") or []), {})
    state = container.get("state") or {}
    terminated = state.get("terminated") or (container.get("lastState") or {}).get("terminated") or {}
    waiting = state.get("waiting") or {}
    return PodView(
        name=meta.get("name", ""),
        rank=_int(labels.get(LABEL_RANK), -1),
        attempt=_int(labels.get(LABEL_ATTEMPT), 0),
        phase=status.get("phase") or "Pending",
        terminating=bool(meta.get("deletionTimestamp")),
        ready=conditions.get("Ready", {}).get("status") == "True",
        created=parse_time(meta.get("creationTimestamp")),
        ip=status.get("podIP"),
        reason=status.get("reason"),
        message=status.get("message"),
        exit_code=terminated.get("exitCode"),
        termination_message=terminated.get("message"),
        waiting_reason=waiting.get("reason"),
        waiting_message=waiting.get("message"),
        unschedulable=scheduled.get("message") if _unschedulable(scheduled) else None,
        gated=bool((body.get("spec") or {}).get("schedulingGates")) or scheduled.get("reason") == SCHEDULING_GATED,
        disrupted=conditions.get("DisruptionTarget", {}).get("status") == "True",
        disruption=_disruption(conditions.get("DisruptionTarget", {})),
        owner_uid=controller_uid(body),
        node=(body.get("spec") or {}).get("nodeName"),
        deletion_deadline=parse_time(meta.get("deletionTimestamp")),
    )


def node_unreachable(body: dict[str, Any]) -> bool:
    """The node's kubelet stopped reporting: the node lifecycle controller set Ready=Unknown (or tainted it
    unreachable). Its pods' deletions will never be confirmed by that kubelet."""
    conditions = (body.get("status") or {}).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), {})
    taints = (body.get("spec") or {}).get("taints") or []
    return ready.get("status") == "Unknown" or any(t.get("key") == UNREACHABLE_TAINT for t in taints)


def _disruption(condition: dict[str, Any]) -> str | None:
    if condition.get("status") != "True":
        return None
    return ": ".join(part for part in (condition.get("reason"), condition.get("message")) if part) or None


def _unschedulable(scheduled: dict[str, Any]) -> bool:
    return scheduled.get("status") == "False" and scheduled.get("reason") != SCHEDULING_GATED


def controller_uid(body: dict[str, Any]) -> str | None:
    """uid of the object's controlling owner: tells our children from a deleted namesake job's leftovers."""
    refs = (body.get("metadata") or {}).get("ownerReferences") or []
    return next((r.get("uid") for r in refs if r.get("controller")), None)


def owning_job(body: dict[str, Any]) -> str | None:
    """Name of the LLMTrainingJob that controls a pod: the full job name, which the job-name label holds only when
    it fits a label value (63 characters); the operator's pod index is keyed by this."""
    refs = (body.get("metadata") or {}).get("ownerReferences") or []
    return next((r.get("name") for r in refs if r.get("controller") and r.get("kind") == KIND), None)


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


@dataclass(frozen=True)
class Failure:
    kind: Literal["permanent", "retryable", "disruption"]
    reason: str  # InvalidConfig, Diverged, Evicted, NodeLost, PodFailed, ...
    message: str


def classify_failure(pod: PodView) -> Failure:
    """Why a pod of the current attempt is not going to finish, and whether restarting the gang can help."""
    where = f"node {pod.rank} ({pod.name})"
    if pod.phase == "Unknown":
        return Failure("disruption", "NodeLost", f"{where}: lost contact with its node")
    if pod.disrupted or (pod.reason in DISRUPTION_REASONS):
        reason = pod.reason or "Disrupted"
        detail = pod.disruption or pod.message or "disrupted"
        return Failure("disruption", reason, f"{where}: {reason}: {detail}")
    report = parse_termination_record(pod.termination_message)
    if report is not None:
        code = report.get("exitCode")
        reason = str(report.get("reason") or PERMANENT_EXIT_CODES.get(code, "Error"))
        text = f"{where} exited {code}: {reason}: {report.get('message', '')}".rstrip(": ")
        if code in PERMANENT_EXIT_CODES or reason in PERMANENT_EXIT_CODES.values():
            return Failure("permanent", PERMANENT_EXIT_CODES.get(code, reason), text)
        return Failure("retryable", "PodFailed", text)
    if pod.exit_code in PERMANENT_EXIT_CODES:
        reason = PERMANENT_EXIT_CODES[pod.exit_code]
        tail = (pod.termination_message or "").strip().splitlines()[-1:] or [""]
        return Failure("permanent", reason, f"{where} exited {pod.exit_code} ({reason}) {tail[0]}".strip())
    return Failure("retryable", "PodFailed", f"{where} failed with exit code {pod.exit_code}")


def pending_reason(pod: PodView) -> tuple[str, str]:
    """Why a pod is still Pending, from its scheduling condition or its container's waiting state."""
    if pod.gated:
        return "QueuedByKueue", f"{pod.name}: held by a scheduling gate until the queue admits the gang"
    if pod.unschedulable:
        return "Unschedulable", f"{pod.name}: {pod.unschedulable}"
    if pod.waiting_reason:
        detail = f": {pod.waiting_message}" if pod.waiting_message else ""
        return pod.waiting_reason, f"{pod.name}: {pod.waiting_reason}{detail}"
    return "StartupTimeout", f"{pod.name}: still Pending"
