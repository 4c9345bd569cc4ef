"""Crash-loop detection: attempts that keep failing the same way without making progress stop the job (CrashLoop,
with the failing message) instead of spending the rest of backoffLimit; disruptions and progress break the streak."""

from __future__ import annotations

from typing import Any

import pytest
from llmtrain_operator.api import FailureStreak
from llmtrain_operator.observe import Failure
from llmtrain_operator.reconcile import failure_streak, reconcile
from reconcile_inputs import NOW, RUNNING, SETTINGS, cond, job, pod, seen

EXIT_1 = "node 1 (demo-node-1) failed with exit code 1"


def failed_attempt(attempt: int, **fields: Any) -> Any:
    """Attempt `attempt` of the gang: node 0 running, node 1 failed (exit code 1 unless `fields` say otherwise)."""
    return seen(pod(0, attempt=attempt), pod(1, "Failed", attempt=attempt, **{"exit_code": 1, **fields}))


def status(restarts: int, step: int | None = None, last: dict[str, Any] | None = None) -> dict[str, Any]:
    stored: dict[str, Any] = {**RUNNING, "restarts": restarts}
    if step is not None:
        stored["progress"] = {"step": step}
    if last is not None:
        stored["lastFailure"] = last
    return stored


def streak(count: int, step: int | None = None, message: str = EXIT_1, reason: str = "PodFailed") -> dict[str, Any]:
    """status.lastFailure as stored (no step key before any step was seen)."""
    stored = {"reason": reason, "message": message, "count": count}
    return stored if step is None else {**stored, "step": step}


def test_a_first_failure_restarts_the_gang_and_starts_a_streak():
    d = reconcile(job(status=status(0), runPolicy={"backoffLimit": 5}), failed_attempt(0), NOW, SETTINGS)
    assert d.status["phase"] == "Restarting" and d.status["lastFailure"] == streak(1)


def test_the_same_failure_again_without_progress_stops_the_job_as_a_crash_loop():
    stored = status(1, last=streak(1))
    d = reconcile(job(status=stored, runPolicy={"backoffLimit": 5}), failed_attempt(1), NOW, SETTINGS)
    assert d.status["phase"] == "Failed" and d.status["restarts"] == 1  # 4 restarts of backoffLimit left unspent
    failed = cond(d, "Failed")
    assert failed["reason"] == "CrashLoop"
    assert failed["message"] == f"2 attempts in a row failed the same way before any step: {EXIT_1}"
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "CrashLoop")]


def test_a_crash_loop_names_the_step_it_is_stuck_at():
    stored = status(1, step=300, last=streak(1, step=300))
    d = reconcile(job(status=stored, runPolicy={"backoffLimit": 5}), failed_attempt(1), NOW, SETTINGS)
    assert cond(d, "Failed")["message"].startswith("2 attempts in a row failed the same way at step 300: ")


def test_progress_between_the_failures_breaks_the_streak():
    stored = status(1, step=400, last=streak(1, step=300))  # the second attempt got from step 300 to 400
    d = reconcile(job(status=stored, runPolicy={"backoffLimit": 5}), failed_attempt(1), NOW, SETTINGS)
    assert d.status["phase"] == "Restarting" and d.status["lastFailure"] == streak(1, step=400)


def test_a_different_failure_breaks_the_streak():
    stored = status(1, last=streak(1, message="node 0 (demo-node-0) failed with exit code 2"))
    d = reconcile(job(status=stored, runPolicy={"backoffLimit": 5}), failed_attempt(1), NOW, SETTINGS)
    assert d.status["phase"] == "Restarting" and d.status["lastFailure"]["count"] == 1


def test_disruptions_are_not_a_crash_loop():
    evicted = {"reason": "Evicted", "message": "node low on memory", "exit_code": None}
    first = reconcile(job(status=status(0), runPolicy={"backoffLimit": 5}), failed_attempt(0, **evicted), NOW, SETTINGS)
    again = reconcile(
        job(status={**first.status, "phase": "Running"}, runPolicy={"backoffLimit": 5}),
        failed_attempt(1, **evicted),
        NOW,
        SETTINGS,
    )
    assert again.status["phase"] == "Restarting" and again.status["disruptions"] == 2 and again.status["restarts"] == 0
    assert "lastFailure" not in again.status  # disruptions are not the job's failures


@pytest.mark.parametrize(("limit", "phase"), [(0, "Restarting"), (3, "Restarting"), (2, "Failed")])
def test_crash_loop_limit_sets_how_many_identical_failures_stop_the_job(limit, phase):
    stored = status(1, last=streak(1))
    policy = {"backoffLimit": 5, "crashLoopLimit": limit}
    d = reconcile(job(status=stored, runPolicy=policy), failed_attempt(1), NOW, SETTINGS)
    assert d.status["phase"] == phase


def test_a_spent_backoff_limit_is_reported_as_such_even_in_a_crash_loop():
    stored = status(2, last=streak(1))  # backoffLimit: 2 (the default inputs')
    d = reconcile(job(status=stored), failed_attempt(2), NOW, SETTINGS)
    assert cond(d, "Failed")["reason"] == "BackoffLimitExceeded"


def test_failure_streak_counts_identical_failures_at_the_same_step():
    cause = Failure("retryable", "PodFailed", EXIT_1)
    first = failure_streak(None, cause, step=None)
    assert first == FailureStreak(reason="PodFailed", message=EXIT_1, step=None, count=1)
    assert failure_streak(first, cause, step=None).count == 2
    assert failure_streak(first, cause, step=10).count == 1
    assert failure_streak(first, Failure("retryable", "Stalled", EXIT_1), step=None).count == 1
