"""Stall detection: a Running gang whose rank 0 stops advancing for runPolicy.stallTimeoutSeconds is restarted
(reason Stalled, counted against backoffLimit); metrics that cannot be read are reported, never taken for a stall.
Also the pieces it stands on: the step clock in status.progress, the per-job scrape back-off, the metrics read."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from llmtrain_operator.api import Progress
from llmtrain_operator.progress import MetricsUnreachable, fetch_progress, scrape_backoff, with_step_time
from llmtrain_operator.reconcile import METRICS_GRACE_SECONDS, Observed, reconcile
from llmtrain_operator.reconcile import MetricsUnreachable as Unreadable
from llmtrain_operator.timestamps import rfc3339
from reconcile_inputs import NOW, RUNNING, SETTINGS, cond, deleted, job, pod, reasons

TIMEOUT = 1800  # the default stallTimeoutSeconds


def ago(seconds: float) -> str:
    return rfc3339(NOW - timedelta(seconds=seconds))


def running_for(seconds: float, step: int | None = 40, step_seconds_ago: float | None = None, **status: Any):
    """A Running job whose gang has run `seconds`, rank 0 last seen at `step` `step_seconds_ago` seconds ago."""
    condition = {"type": "Running", "status": "True", "reason": "AllNodesRunning", "lastTransitionTime": ago(seconds)}
    stored: dict[str, Any] = {**RUNNING, "conditions": [condition], **status}
    if step is not None:
        stored["progress"] = {"step": step, "lastStepTime": ago(step_seconds_ago if step_seconds_ago else seconds)}
    return stored


def both_running(**observed: Any) -> Observed:
    return Observed(pods=(pod(0), pod(1)), config_map=True, service=True, **observed)


def test_a_gang_whose_step_has_not_moved_for_the_timeout_is_restarted_as_stalled():
    d = reconcile(job(status=running_for(7200, step=40, step_seconds_ago=TIMEOUT)), both_running(), NOW, SETTINGS)
    assert d.status["phase"] == "Restarting" and d.status["restarts"] == 1
    assert cond(d, "Restarting")["reason"] == "Stalled"
    assert cond(d, "Progressing")["status"] == "False" and cond(d, "Progressing")["reason"] == "Stalled"
    assert deleted(d) == ["demo-node-0", "demo-node-1"]
    assert ("Warning", "Stalled") in reasons(d)
    warning = next(e for e in d.events if e.reason == "Stalled")
    assert "step 40" in warning.message and ago(TIMEOUT) in warning.message


def test_a_gang_within_the_timeout_keeps_running_and_is_looked_at_again_when_it_would_expire():
    d = reconcile(job(status=running_for(7200, step=40, step_seconds_ago=1000)), both_running(), NOW, SETTINGS)
    assert d.status["phase"] == "Running" and d.deletes == []
    assert d.requeue_after == TIMEOUT - 1000


def test_a_new_attempt_gets_the_full_timeout_from_its_start():
    # rank 0's step is two hours old (the previous attempt's), but this gang has run only 100 s
    d = reconcile(job(status=running_for(100, step=40, step_seconds_ago=7200)), both_running(), NOW, SETTINGS)
    assert d.status["phase"] == "Running" and d.requeue_after == TIMEOUT - 100


def test_a_gang_that_never_reported_a_step_stalls_from_its_start():
    d = reconcile(job(status=running_for(TIMEOUT, step=None)), both_running(), NOW, SETTINGS)
    assert d.status["phase"] == "Restarting" and "since the gang started running" in cond(d, "Restarting")["message"]


def test_a_moving_step_restarts_the_clock():
    stored = running_for(7200, step=40, step_seconds_ago=TIMEOUT + 5)
    d = reconcile(job(status=stored), both_running(), NOW, SETTINGS, progress=Progress(step=41))
    assert d.status["phase"] == "Running" and d.status["progress"]["lastStepTime"] == rfc3339(NOW)
    assert cond(d, "Progressing")["status"] == "True"


def test_a_stall_with_the_backoff_limit_spent_fails_the_job():
    stored = running_for(7200, step=40, step_seconds_ago=TIMEOUT, restarts=2)  # backoffLimit: 2
    d = reconcile(job(status=stored), Observed(pods=(pod(0, attempt=2), pod(1, attempt=2))), NOW, SETTINGS)
    assert d.status["phase"] == "Failed" and cond(d, "Failed")["reason"] == "BackoffLimitExceeded"
    assert "no step in 1800s" in cond(d, "Failed")["message"]


def test_unreadable_metrics_are_reported_in_a_condition_and_never_taken_for_a_stall():
    stale = running_for(7200, step=40, step_seconds_ago=7200)
    observed = both_running(
        metrics_unreachable=Unreadable("http://10.0.0.1:9090/metrics: timed out", NOW - timedelta(hours=1))
    )
    d = reconcile(job(status=stale), observed, NOW, SETTINGS)
    assert d.status["phase"] == "Running" and d.deletes == []
    progressing = cond(d, "Progressing")
    assert progressing["status"] == "Unknown" and progressing["reason"] == "ProgressUnavailable"
    assert "timed out" in progressing["message"] and reasons(d) == [("Warning", "ProgressUnavailable")]
    again = reconcile(job(status=d.status), observed, NOW + timedelta(seconds=10), SETTINGS)
    assert again.events == []  # reported once


@pytest.mark.parametrize(
    ("stall_timeout", "grace"), [(TIMEOUT, METRICS_GRACE_SECONDS), (30, 30), (0, METRICS_GRACE_SECONDS)]
)
def test_metrics_unreadable_while_the_trainer_starts_are_not_reported_yet(stall_timeout, grace):
    stale = running_for(7200, step=None)
    observed = both_running(metrics_unreachable=Unreadable("connection refused", NOW - timedelta(seconds=grace - 1)))
    d = reconcile(job(status=stale, runPolicy={"stallTimeoutSeconds": stall_timeout}), observed, NOW, SETTINGS)
    assert d.events == [] and "conditions" not in (d.status_patch or {}) and d.deletes == []
    assert d.requeue_after == 1  # looked at again when the grace ends


def test_a_stall_timeout_of_zero_turns_detection_off():
    stale = running_for(7200, step=40, step_seconds_ago=7200)
    d = reconcile(job(status=stale, runPolicy={"stallTimeoutSeconds": 0}), both_running(), NOW, SETTINGS)
    assert d.status["phase"] == "Running" and d.deletes == [] and d.requeue_after is None


def test_a_job_not_yet_running_is_not_judged():
    pending = {**running_for(7200, step=40, step_seconds_ago=7200), "phase": "Pending"}
    d = reconcile(job(status=pending), both_running(), NOW, SETTINGS)
    assert d.status["phase"] == "Running" and d.deletes == []  # running_policy's transition, no stall


# ----- the step clock, the scrape back-off, the metrics read ----------------------------------------------------


def test_the_step_clock_moves_only_when_the_step_does():
    stored = Progress(step=40, last_step_time=ago(600))
    assert with_step_time(stored, Progress(step=40, loss=2.0), NOW).last_step_time == ago(600)
    assert with_step_time(stored, Progress(step=41), NOW).last_step_time == rfc3339(NOW)
    assert with_step_time(stored, Progress(step=12), NOW).last_step_time == rfc3339(NOW)  # resumed from a checkpoint
    assert with_step_time(None, Progress(step=1), NOW).last_step_time == rfc3339(NOW)
    assert with_step_time(Progress(step=1), Progress(step=1), NOW).last_step_time == rfc3339(NOW)  # older operator


def test_an_unreachable_job_is_scraped_less_and_less_often():
    assert [scrape_backoff(failures, 10.0) for failures in range(7)] == [0, 10, 20, 40, 80, 160, 300]


@pytest.fixture
def metrics_server() -> Iterator[tuple[int, list[str]]]:
    """A local HTTP server serving whatever text is last in the list."""
    bodies: list[str] = ["# TYPE llmtrain_step gauge\nllmtrain_step 7\n"]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = bodies[-1].encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], bodies
    finally:
        server.shutdown()
        server.server_close()


def test_a_metrics_read_tells_a_step_from_no_step_yet_from_nothing_answering(metrics_server):
    port, bodies = metrics_server
    assert fetch_progress("127.0.0.1", port, timeout=2).step == 7
    bodies.append("# TYPE python_info gauge\npython_info 1\n")  # up, not training yet
    assert fetch_progress("127.0.0.1", port, timeout=2) is None
    with pytest.raises(MetricsUnreachable):
        fetch_progress("127.0.0.1", 1, timeout=2)  # nothing listens on port 1
