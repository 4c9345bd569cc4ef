"""Pod phase and conditions as the process kubelet reports them (the kubelet's own rules)."""

from __future__ import annotations

from llmtrain_testbed.kubelet.status import (
    ContainerState,
    Terminated,
    container_status,
    pod_conditions,
    pod_phase,
    pod_status,
)

T0 = "2030-01-01T00:00:00Z"
T1 = "2030-01-01T00:01:00Z"


def running(name: str = "main", ready: bool = True) -> ContainerState:
    return ContainerState(name=name, running_since=T0, ready=ready, started=True)


def exited(code: int, name: str = "main") -> ContainerState:
    return ContainerState(name=name, terminated=Terminated(code, "Completed" if code == 0 else "Error", T0, T1))


def backing_off(code: int, name: str = "main") -> ContainerState:
    return ContainerState(
        name=name, waiting_reason="CrashLoopBackOff", last_terminated=Terminated(code, "Error", T0, T1), restart_count=1
    )


def test_all_containers_exiting_zero_is_succeeded():
    assert pod_phase("Never", [], [exited(0), exited(0, "side")]) == "Succeeded"
    assert pod_phase("OnFailure", [], [exited(0)]) == "Succeeded"


def test_a_failure_with_restart_policy_never_is_failed():
    assert pod_phase("Never", [], [exited(3)]) == "Failed"


def test_a_container_backing_off_keeps_the_pod_running():
    assert pod_phase("OnFailure", [], [backing_off(1)]) == "Running"
    assert pod_phase("Always", [], [exited(0)]) == "Running"


def test_pending_until_init_containers_completed_and_failed_init_with_never_fails():
    assert pod_phase("Always", [running("init")], [ContainerState(name="main")]) == "Pending"
    assert pod_phase("Never", [exited(1, "init")], [ContainerState(name="main")]) == "Failed"
    assert pod_phase("Always", [exited(0, "init")], [running()]) == "Running"


def test_one_running_container_makes_the_pod_running():
    assert pod_phase("Never", [], [exited(3), running("side")]) == "Running"


def test_ready_conditions_follow_container_readiness_and_keep_transition_times():
    first = pod_conditions("Running", True, [], [running(ready=False)], [], T0)
    ready = {c["type"]: c for c in first}["Ready"]
    assert ready["status"] == "False" and ready["reason"] == "ContainersNotReady"
    again = {c["type"]: c for c in pod_conditions("Running", True, [], [running(ready=False)], first, T1)}
    assert again["Ready"]["lastTransitionTime"] == T0
    flipped = {c["type"]: c for c in pod_conditions("Running", True, [], [running()], first, T1)}
    assert flipped["Ready"]["status"] == "True" and flipped["Ready"]["lastTransitionTime"] == T1


def test_completed_pods_are_not_ready_with_reason_pod_completed():
    conds = {c["type"]: c for c in pod_conditions("Succeeded", False, [], [exited(0)], [], T0)}
    assert conds["Ready"]["reason"] == "PodCompleted" and conds["Initialized"]["status"] == "True"


def test_terminated_container_status_carries_exit_code_reason_and_message():
    state = exited(3)
    state.terminated.message = "bad config"
    status = container_status(state)
    assert status["state"]["terminated"]["exitCode"] == 3
    assert status["state"]["terminated"]["reason"] == "Error"
    assert status["state"]["terminated"]["message"] == "bad config"
    assert status["ready"] is False


def test_pod_status_reports_ips_and_clears_what_does_not_apply():
    status = pod_status(
        "Always",
        [],
        [running()],
        sandbox_ready=True,
        pod_ip="10.88.0.9",
        host_ip="10.88.0.1",
        start_time=T0,
        prev_conditions=[],
        now=T0,
    )
    assert status["podIP"] == "10.88.0.9" and status["podIPs"] == [{"ip": "10.88.0.9"}]
    assert status["hostIP"] == "10.88.0.1" and status["phase"] == "Running"
    assert status["initContainerStatuses"] is None
