"""What a restarted process kubelet reports for containers whose processes died with its previous run."""

from __future__ import annotations

from llmtrain_testbed.kubelet.recovery import LOST_REASON, recover_container

NOW = "2030-01-01T00:05:00Z"
RUNNING = {"name": "main", "restartCount": 2, "state": {"running": {"startedAt": "2030-01-01T00:00:00Z"}}}
SUCCEEDED = {"name": "init", "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}


def test_a_lost_container_with_restart_never_is_terminated_137_container_status_unknown():
    state, restart = recover_container("main", RUNNING, init=False, restart_policy="Never", now=NOW)
    assert not restart
    assert state.terminated.exit_code == 137 and state.terminated.reason == LOST_REASON
    assert state.terminated.started_at == "2030-01-01T00:00:00Z" and state.terminated.finished_at == NOW
    assert state.restart_count == 2


def test_a_lost_container_with_restart_always_restarts_with_the_loss_as_last_state():
    state, restart = recover_container("main", RUNNING, init=False, restart_policy="Always", now=NOW)
    assert restart and state.terminated is None
    assert state.last_terminated.reason == LOST_REASON and state.waiting_reason == "CrashLoopBackOff"


def test_a_completed_init_container_is_not_rerun():
    state, restart = recover_container("init", SUCCEEDED, init=True, restart_policy="Always", now=NOW)
    assert not restart and state.succeeded


def test_a_container_that_succeeded_under_on_failure_stays_succeeded():
    prev = {**SUCCEEDED, "name": "main"}
    state, restart = recover_container("main", prev, init=False, restart_policy="OnFailure", now=NOW)
    assert not restart and state.succeeded


def test_a_container_that_never_started_starts_normally():
    prev = {"name": "main", "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}
    state, restart = recover_container("main", prev, init=False, restart_policy="Never", now=NOW)
    assert not restart and state.terminated is None and state.last_terminated is None
