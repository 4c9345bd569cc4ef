"""Pod status from the kubelet's view of its containers (pure; mirrors the kubelet's getPhase and conditions)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Terminated:
    exit_code: int
    reason: str
    started_at: str
    finished_at: str
    message: str = ""

    def to_api(self, container_id: str) -> dict:
        out = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "containerID": container_id,
        }
        if self.message:
            out["message"] = self.message
        return out


@dataclass
class ContainerState:
    """One container as the kubelet sees it: waiting (not started / backing off), running, or terminated."""

    name: str
    image: str = ""
    restart_count: int = 0
    running_since: str | None = None
    terminated: Terminated | None = None
    last_terminated: Terminated | None = None
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    ready: bool = False
    started: bool = False
    container_id: str = ""

    @property
    def succeeded(self) -> bool:
        return self.terminated is not None and self.terminated.exit_code == 0


def terminated_reason(exit_code: int) -> str:
    return "Completed" if exit_code == 0 else "Error"


def container_status(c: ContainerState) -> dict:
    """The containerStatuses entry for one container."""
    if c.running_since is not None:
        state: dict = {"running": {"startedAt": c.running_since}}
    elif c.terminated is not None:
        state = {"terminated": c.terminated.to_api(c.container_id)}
    else:
        waiting = {"reason": c.waiting_reason}
        if c.waiting_message:
            waiting["message"] = c.waiting_message
        state = {"waiting": waiting}
    last = {"terminated": c.last_terminated.to_api("")} if c.last_terminated else {}
    out = {
        "name": c.name,
        "state": state,
        "lastState": last,
        "ready": c.ready,
        "restartCount": c.restart_count,
        "image": c.image or "process",
        "imageID": "",
        "started": c.running_since is not None and c.started,
    }
    if c.container_id:
        out["containerID"] = c.container_id
    return out


def pod_phase(restart_policy: str, init: list[ContainerState], main: list[ContainerState]) -> str:
    """Pending / Running / Succeeded / Failed, following the kubelet's rules."""
    failed_init = any(c.terminated is not None and c.terminated.exit_code != 0 for c in init)
    pending_init = sum(1 for c in init if not c.succeeded)
    if failed_init and restart_policy == "Never":
        return "Failed"
    running = stopped = succeeded = waiting = 0
    for c in main:
        if c.running_since is not None:
            running += 1
        elif c.terminated is not None:
            stopped += 1
            succeeded += c.terminated.exit_code == 0
        elif c.last_terminated is not None:
            stopped += 1
        else:
            waiting += 1
    if pending_init or waiting:
        return "Pending"
    if running:
        return "Running"
    if stopped:
        if restart_policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        return "Failed" if restart_policy == "Never" else "Running"
    return "Pending"


def _condition(ctype: str, ok: bool, reason: str, message: str, prev: dict[str, dict], now: str) -> dict:
    status = "True" if ok else "False"
    old = prev.get(ctype)
    since = old["lastTransitionTime"] if old and old.get("status") == status and old.get("lastTransitionTime") else now
    cond = {"type": ctype, "status": status, "lastProbeTime": None, "lastTransitionTime": since}
    if not ok and reason:
        cond["reason"] = reason
        if message:
            cond["message"] = message
    return cond


def pod_conditions(
    phase: str,
    sandbox_ready: bool,
    init: list[ContainerState],
    main: list[ContainerState],
    prev_conditions: list[dict],
    now: str,
) -> list[dict]:
    """PodScheduled, PodReadyToStartContainers, Initialized, ContainersReady, Ready (lastTransitionTime kept)."""
    prev = {c["type"]: c for c in prev_conditions or []}
    terminal = phase in ("Succeeded", "Failed")
    not_init = [c.name for c in init if not c.succeeded]
    initialized = not not_init or (terminal and phase == "Succeeded")
    unready = [c.name for c in main if not c.ready]
    if terminal:
        ready_reason, ready_msg = "PodCompleted", ""
    else:
        ready_reason = "ContainersNotReady"
        ready_msg = f"containers with unready status: [{' '.join(unready)}]"
    scheduled = prev.get("PodScheduled") or {"type": "PodScheduled", "status": "True", "lastTransitionTime": now}
    return [
        {**scheduled, "status": "True"},
        _condition("PodReadyToStartContainers", sandbox_ready, "", "", prev, now),
        _condition(
            "Initialized",
            initialized,
            "ContainersNotInitialized",
            f"containers with incomplete status: [{' '.join(not_init)}]",
            prev,
            now,
        ),
        _condition("ContainersReady", not unready and not terminal, ready_reason, ready_msg, prev, now),
        _condition("Ready", not unready and not terminal, ready_reason, ready_msg, prev, now),
    ]


def pod_status(
    restart_policy: str,
    init: list[ContainerState],
    main: list[ContainerState],
    *,
    sandbox_ready: bool,
    pod_ip: str | None,
    host_ip: str,
    start_time: str,
    prev_conditions: list[dict],
    now: str,
) -> dict:
    """The whole status the kubelet writes (a merge patch: lists replace, absent keys are cleared with None)."""
    phase = pod_phase(restart_policy, init, main)
    status: dict = {
        "phase": phase,
        "conditions": pod_conditions(phase, sandbox_ready, init, main, prev_conditions, now),
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}] if pod_ip else None,
        "startTime": start_time,
        "containerStatuses": [container_status(c) for c in main],
        "initContainerStatuses": [container_status(c) for c in init] if init else None,
    }
    return status
