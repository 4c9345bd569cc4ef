"""The operator's own Prometheus metrics (prefix llmtrain_operator_), served on --metrics-port /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOBS = Gauge("llmtrain_operator_jobs", "LLMTrainingJobs known to this operator, by phase.", ["phase"])
TRANSITIONS = Counter("llmtrain_operator_phase_transitions_total", "Job phase transitions.", ["from_phase", "to_phase"])
PODS_CREATED = Counter("llmtrain_operator_pods_created_total", "Node pods created.")
CREATES_REJECTED = Counter(
    "llmtrain_operator_creates_rejected_total",
    "Creates (and config patches) the API server refused (quota, admission, RBAC); each also sets "
    "Created=False/CreateFailed on the job.",
)
PODS_DELETED = Counter("llmtrain_operator_pods_deleted_total", "Node pods deleted.")
GANG_RESTARTS = Counter("llmtrain_operator_gang_restarts_total", "Gang restarts after retryable failures.")
RECONCILE_SECONDS = Histogram(
    "llmtrain_operator_reconcile_duration_seconds",
    "Time to reconcile one job (read, decide, apply).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILE_LAG = Histogram(
    "llmtrain_operator_reconcile_lag_seconds",
    "Time from the first trigger of a job (a job or pod event, a requeue, the resync) not yet served to the start of "
    "the reconcile that serves it: waiting behind that job's running reconcile and for the event loop.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
ERROR_STAGES = ("observe", "decide", "apply", "progress", "background")
RECONCILE_ERRORS = Counter(
    "llmtrain_operator_reconcile_errors_total",
    "Errors in the operator's work, by stage: observe, decide, apply (one reconcile), progress (the resync's metrics "
    "read), background (a task that died). Each is also logged with its traceback.",
    ["stage"],
)
for _stage in ERROR_STAGES:
    RECONCILE_ERRORS.labels(_stage)  # every series exported from the start, at 0, so rate() sees the first error
API_RETRIES = Counter(
    "llmtrain_operator_api_retries_total",
    "Kubernetes API requests repeated after 429, 5xx or a dropped connection (code 0), by the status that caused it.",
    ["code"],
)
API_REQUESTS = Counter(
    "llmtrain_operator_api_requests_total",
    "Kubernetes API requests made by the operator (kopf's own watches not included).",
    ["verb", "resource", "code"],
)

LEADER = Gauge("llmtrain_operator_leader", "1 while this replica is the leader and acts on jobs; 0 while it stands by.")

PHASES = ("Pending", "Running", "Restarting", "Succeeded", "Failed", "Suspended")


def publish_phases(phases: dict[object, str]) -> None:
    """Set the jobs-by-phase gauge from the operator's current view (every phase, so zeroes show)."""
    for phase in PHASES:
        JOBS.labels(phase).set(sum(1 for p in phases.values() if p == phase))
