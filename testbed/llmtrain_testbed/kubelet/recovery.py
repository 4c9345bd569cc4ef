"""What a restarted kubelet reports for a container a previous run started (pure).

A previous run's processes cannot be adopted (their exit codes would be unknowable), so the kubelet kills them at
start. A container the API still shows running is therefore reported lost (exit 137, ContainerStatusUnknown,
as the real kubelet does for containers it cannot find) and then follows restartPolicy like any exit. Init
containers that had completed are not rerun.
"""

from __future__ import annotations

from .status import ContainerState, Terminated

LOST_REASON = "ContainerStatusUnknown"
LOST_MESSAGE = "The process kubelet restarted and lost the container's process"


def terminated_from_api(state: dict | None) -> Terminated | None:
    term = (state or {}).get("terminated")
    if not term:
        return None
    return Terminated(
        exit_code=int(term.get("exitCode", 0)),
        reason=term.get("reason", ""),
        started_at=term.get("startedAt") or "",
        finished_at=term.get("finishedAt") or "",
        message=term.get("message", ""),
    )


def recover_container(
    name: str, prev: dict, *, init: bool, restart_policy: str, now: str
) -> tuple[ContainerState, bool]:
    """The container's state from its last reported status, and whether its next start is a restart."""
    state = ContainerState(name=name, image=prev.get("image", ""))
    reported = prev.get("state") or {}
    state.restart_count = int(prev.get("restartCount", 0))
    state.last_terminated = terminated_from_api(prev.get("lastState"))
    done = terminated_from_api(reported)
    running = reported.get("running")
    if not (done or running):  # never started, or waiting to be restarted
        if state.last_terminated is not None:
            state.waiting_reason = "CrashLoopBackOff"
            return state, True
        return state, False
    outcome = done or Terminated(137, LOST_REASON, running.get("startedAt") or now, now, LOST_MESSAGE)
    if init:
        if outcome.exit_code == 0:
            state.terminated, state.ready = outcome, True
            return state, False
        restart = restart_policy != "Never"
    else:
        restart = restart_policy == "Always" or (restart_policy == "OnFailure" and outcome.exit_code != 0)
    if restart:
        state.last_terminated, state.waiting_reason = outcome, "CrashLoopBackOff"
        return state, True
    state.terminated = outcome
    return state, False
