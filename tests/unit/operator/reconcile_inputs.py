"""Inputs for the reconcile and policy tests: a two-node job, its node pods, and what the operator observes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from llmtrain_operator.observe import PodView
from llmtrain_operator.reconcile import (
    POLICIES,
    Decision,
    JobView,
    Observed,
    OperatorSettings,
    Policy,
    ReconcileContext,
)
from llmtrain_operator.timestamps import rfc3339

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
SETTINGS = OperatorSettings(default_image="trainer:test")
SPEC: dict[str, Any] = {
    "nodes": 2,
    "procsPerNode": 1,
    "model": {"preset": "tiny"},
    "training": {"steps": 10, "globalBatchSize": 2},
    "runPolicy": {"backoffLimit": 2},
}
RUNNING = {"phase": "Running", "restarts": 0, "startTime": rfc3339(NOW - timedelta(minutes=5))}
CREATED = {"type": "Created", "status": "True", "reason": "ChildrenCreated", "lastTransitionTime": rfc3339(NOW)}
# A job whose node pods were created by an earlier reconcile (and counted as Created once they existed).
PENDING_CREATED = {"phase": "Pending", "restarts": 0, "conditions": [CREATED]}
RESTARTING = {
    **RUNNING,
    "phase": "Restarting",
    "restarts": 1,
    "conditions": [{"type": "Restarting", "status": "True", "reason": "PodFailed", "lastTransitionTime": rfc3339(NOW)}],
}


def job(status: dict[str, Any] | None = None, annotations: dict[str, str] | None = None, **spec: Any) -> JobView:
    """The job `demo` in namespace `ns`: SPEC with `spec`'s fields over it (runPolicy merged key by key)."""
    run_policy = {**SPEC["runPolicy"], **spec.pop("runPolicy", {})}
    return JobView(
        name="demo",
        namespace="ns",
        uid="uid-1",
        spec={**SPEC, **spec, "runPolicy": run_policy},
        status=status or {},
        annotations=annotations or {},
    )


def pod(rank: int, phase: str = "Running", attempt: int = 0, **fields: Any) -> PodView:
    """Node pod `rank` of `demo`, created 5 s before NOW, ready when Running."""
    defaults = {"ready": phase == "Running", "created": NOW - timedelta(seconds=5)}
    return PodView(name=f"demo-node-{rank}", rank=rank, attempt=attempt, phase=phase, **{**defaults, **fields})


# Node 1 failed through no fault of its own (eviction, preemption, a lost node), with the Restarting reason it gives.
DISRUPTED_NODE_1 = [
    (pod(1, "Failed", reason="Evicted", message="node low on memory"), "Evicted"),
    (pod(1, "Failed", disrupted=True, exit_code=137), "Disrupted"),
    (pod(1, "Unknown"), "NodeLost"),
]


def seen(*pods: PodView) -> Observed:
    """`pods`, with the job's ConfigMap and Service in place."""
    return Observed(pods=tuple(pods), config_map=True, service=True)


def context_for(policy: Policy, job_view: JobView, observed: Observed, now: datetime = NOW) -> ReconcileContext:
    """The context as `policy` receives it inside reconcile: every policy before it ran and handed on."""
    ctx = ReconcileContext(job_view, observed, now, SETTINGS)
    for earlier in POLICIES[: POLICIES.index(policy)]:
        assert earlier(ctx) is None, f"{earlier.__name__} ended the reconcile before {policy.__name__}"
    return ctx


def cond(decision: Decision, condition_type: str) -> dict[str, Any]:
    return next(c for c in decision.status["conditions"] if c["type"] == condition_type)


def kinds(decision: Decision) -> list[str]:
    return [m["kind"] for m in decision.creates]


def names(decision: Decision) -> list[str]:
    return [m["metadata"]["name"] for m in decision.creates]


def deleted(decision: Decision) -> list[str]:
    return sorted(name for _, name in decision.deletes)


def reasons(decision: Decision) -> list[tuple[str, str]]:
    return [(event.type, event.reason) for event in decision.events]
