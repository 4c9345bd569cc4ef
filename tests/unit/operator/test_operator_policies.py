"""Each reconcile policy on its own, given the context it receives inside reconcile (every earlier policy handed on).

A policy returns a Decision when it settles the job for this round, None to hand on to the next one.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest
from llmtrain_operator import reconcile as policies
from llmtrain_operator.reconcile import (
    POLICIES,
    RETRY_SOON,
    CreateFailure,
    Observed,
    OperatorSettings,
    ReconcileContext,
    attempt_policy,
    config_service_policy,
    create_failure_policy,
    deadline_policy,
    failure_policy,
    lost_node_policy,
    namesake_policy,
    pod_creation_policy,
    running_policy,
    spec_validation_policy,
    startup_policy,
    success_policy,
    suspend_policy,
    terminal_policy,
)
from llmtrain_operator.timestamps import rfc3339
from reconcile_inputs import (
    DISRUPTED_NODE_1,
    NOW,
    PENDING_CREATED,
    RESTARTING,
    RUNNING,
    SETTINGS,
    cond,
    context_for,
    deleted,
    job,
    kinds,
    names,
    pod,
    reasons,
    seen,
)

PENDING = {"phase": "Pending", "restarts": 0}


# ----- lost_node_policy --------------------------------------------------------------------------------------------


def terminating(rank: int, past_deadline_s: float) -> object:
    deadline = NOW - timedelta(seconds=past_deadline_s)
    return pod(rank, terminating=True, node="llmtrain-node-1", deletion_deadline=deadline)


def test_lost_node_policy_force_deletes_a_pod_terminating_30s_past_its_deadline_and_hands_on():
    ctx = context_for(lost_node_policy, job(status=RESTARTING), seen(pod(0, terminating=True), terminating(1, 31)))
    assert lost_node_policy(ctx) is None
    assert ctx.decision.force_deletes == ["demo-node-1"] and ctx.decision.requeue_after == RETRY_SOON
    (event,) = ctx.decision.events
    assert event.type == "Warning" and event.reason == "NodeLost"
    assert "31s after its grace period" in event.message and "llmtrain-node-1" in event.message


def test_lost_node_policy_does_not_wait_for_the_deadline_on_a_node_that_stopped_reporting():
    observed = Observed(pods=(terminating(1, -60),), config_map=True, service=True)
    observed = replace(observed, unreachable_nodes=frozenset({"llmtrain-node-1"}))
    ctx = context_for(lost_node_policy, job(status=RESTARTING), observed)
    lost_node_policy(ctx)
    assert ctx.decision.force_deletes == ["demo-node-1"]
    assert "its node llmtrain-node-1 stopped reporting" in ctx.decision.events[0].message


def test_lost_node_policy_leaves_pods_their_kubelet_is_still_stopping():
    ctx = context_for(lost_node_policy, job(status=RESTARTING), seen(terminating(0, 29), terminating(1, -30)))
    assert lost_node_policy(ctx) is None
    assert ctx.decision.force_deletes == [] and ctx.decision.events == []


def test_lost_node_policy_cleans_up_after_finished_jobs_too():
    ctx = context_for(lost_node_policy, job(status={"phase": "Succeeded"}), seen(terminating(1, 600)))
    lost_node_policy(ctx)
    assert ctx.decision.force_deletes == ["demo-node-1"]


def test_policies_run_in_the_documented_order():
    assert [policy.__name__ for policy in POLICIES] == [
        "lost_node_policy",
        "terminal_policy",
        "spec_validation_policy",
        "gang_policy",
        "namesake_policy",
        "create_failure_policy",
        "config_service_policy",
        "suspend_policy",
        "deadline_policy",
        "attempt_policy",
        "resize_policy",
        "failure_policy",
        "success_policy",
        "stall_policy",
        "pod_creation_policy",
        "queue_policy",
        "running_policy",
        "startup_policy",
    ]
    for policy in POLICIES:
        assert policy.__name__ in policies.__doc__


# ----- the context ------------------------------------------------------------------------------------------------


def test_context_starts_from_the_stored_status_with_the_observed_generation():
    ctx = ReconcileContext(job(status=RUNNING), seen(), NOW, SETTINGS)
    assert ctx.status.phase == "Running" and ctx.status.observed_generation == 1
    assert (
        ctx.decision.old_status["phase"] == "Running" and ctx.decision.old_status["startTime"] == RUNNING["startTime"]
    )


def test_context_of_a_job_without_status_patches_it_whole():
    assert ReconcileContext(job(), seen(), NOW, SETTINGS).decision.old_status == {}


def test_context_rebuilds_a_status_it_cannot_parse():
    ctx = ReconcileContext(job(status={"restarts": "many"}), seen(), NOW, SETTINGS)
    assert ctx.status.phase == "Pending" and ctx.status.restarts == 0


def test_context_condition_keeps_its_transition_time_while_its_status_holds():
    earlier = rfc3339(NOW - timedelta(hours=1))
    stored = {"conditions": [{"type": "Running", "status": "False", "reason": "A", "lastTransitionTime": earlier}]}
    ctx = ReconcileContext(job(status=stored), seen(), NOW, SETTINGS)
    ctx.set_condition("Running", "False", "B", "other reason, same status")
    assert ctx.condition("Running").last_transition_time == earlier and ctx.condition("Running").reason == "B"
    ctx.set_condition("Running", "True", "C")
    assert ctx.condition("Running").last_transition_time == rfc3339(NOW)
    assert len(ctx.status.conditions) == 1


def test_context_deletes_a_pod_once_and_never_one_already_terminating():
    ctx = ReconcileContext(job(), seen(), NOW, SETTINGS)
    ctx.delete_pods([pod(0), pod(0), pod(1, terminating=True)])
    assert ctx.decision.deletes == [("Pod", "demo-node-0")]


def test_context_spec_is_only_readable_once_accepted():
    ctx = ReconcileContext(job(), seen(), NOW, SETTINGS)
    with pytest.raises(RuntimeError):
        _ = ctx.spec


# ----- terminal_policy ----------------------------------------------------------------------------------------------


def test_terminal_policy_hands_on_a_job_that_has_not_finished():
    assert terminal_policy(context_for(terminal_policy, job(status=RUNNING), seen(pod(0), pod(1)))) is None


def test_terminal_policy_keeps_a_finished_job_finished_whatever_its_pods_or_spec_say():
    done = {"phase": "Succeeded", "completionTime": rfc3339(NOW)}
    decision = terminal_policy(context_for(terminal_policy, job(status=done, nodes=0), seen(pod(0, "Failed"))))
    assert decision.status["phase"] == "Succeeded" and decision.events == [] and decision.creates == []
    assert decision.status["active"] == 0 and decision.status["failed"] == 1


@pytest.mark.parametrize(
    ("clean_pod_policy", "expected"),
    [("All", ["demo-node-0", "demo-node-1"]), ("Running", ["demo-node-1"]), ("None", [])],
)
def test_terminal_policy_applies_the_clean_pod_policy(clean_pod_policy, expected):
    done = {"phase": "Failed", "completionTime": rfc3339(NOW)}
    finished = job(status=done, runPolicy={"cleanPodPolicy": clean_pod_policy})
    decision = terminal_policy(context_for(terminal_policy, finished, seen(pod(0, "Failed"), pod(1))))
    assert deleted(decision) == expected


def test_terminal_policy_requeues_until_the_ttl_after_finished_is_due_then_deletes_the_job():
    done = {"phase": "Succeeded", "completionTime": rfc3339(NOW - timedelta(seconds=100))}
    early = terminal_policy(
        context_for(terminal_policy, job(status=done, runPolicy={"ttlSecondsAfterFinished": 300}), seen())
    )
    assert not early.delete_job and early.requeue_after == 200
    due = terminal_policy(
        context_for(terminal_policy, job(status=done, runPolicy={"ttlSecondsAfterFinished": 100}), seen())
    )
    assert due.delete_job


# ----- spec_validation_policy ---------------------------------------------------------------------------------------


def test_spec_validation_policy_accepts_a_valid_spec_and_hands_on():
    ctx = context_for(spec_validation_policy, job(), Observed())
    assert spec_validation_policy(ctx) is None
    assert ctx.spec.nodes == 2 and ctx.command is None


def test_spec_validation_policy_fails_the_job_once_with_every_error_listed():
    bad = job(procsPerNode=4, parallelism={"tensorParallel": 3}, training={"steps": 10, "globalBatchSize": 3})
    decision = spec_validation_policy(context_for(spec_validation_policy, bad, Observed()))
    assert decision.status["phase"] == "Failed" and cond(decision, "Failed")["reason"] == "InvalidSpec"
    assert decision.creates == [] and reasons(decision) == [("Warning", "InvalidSpec")]
    assert "spec.parallelism.tensorParallel" in decision.events[0].message
    assert "; " in decision.events[0].message  # more than one error, in one message


def test_spec_validation_policy_reports_a_spec_that_does_not_parse():
    decision = spec_validation_policy(context_for(spec_validation_policy, job(nodes="many"), Observed()))
    assert cond(decision, "Failed")["reason"] == "InvalidSpec" and "spec.nodes" in cond(decision, "Failed")["message"]


def test_spec_validation_policy_stops_the_pods_of_a_job_whose_spec_became_invalid():
    invalid = job(status=RUNNING, training={"steps": 10, "globalBatchSize": 3})
    decision = spec_validation_policy(context_for(spec_validation_policy, invalid, seen(pod(0), pod(1, "Succeeded"))))
    assert deleted(decision) == ["demo-node-0"]


@pytest.mark.parametrize("allowed", [True, False])
def test_spec_validation_policy_checks_the_dev_command_only_where_the_operator_honours_it(allowed):
    ctx = ReconcileContext(
        job(annotations={"llmtrain.dev/dev-command": '"not a list"'}),
        Observed(),
        NOW,
        OperatorSettings(default_image="x", allow_dev_command=allowed),
    )
    decision = spec_validation_policy(ctx)
    if allowed:
        assert (
            cond(decision, "Failed")["reason"] == "InvalidSpec" and "JSON list of strings" in decision.events[0].message
        )
    else:
        assert decision is None and ctx.command is None


def test_spec_validation_policy_passes_an_honoured_dev_command_on():
    ctx = ReconcileContext(
        job(annotations={"llmtrain.dev/dev-command": json.dumps(["python", "-c", "pass"])}),
        Observed(),
        NOW,
        OperatorSettings(default_image="x", allow_dev_command=True),
    )
    assert spec_validation_policy(ctx) is None and ctx.command == ["python", "-c", "pass"]


# ----- namesake_policy ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("held", ["demo-config", "demo"])
def test_namesake_policy_waits_while_a_deleted_namesake_holds_the_config_or_service(held):
    observed = Observed(taken=frozenset({held}))
    decision = namesake_policy(context_for(namesake_policy, job(status=PENDING), observed))
    assert decision.creates == [] and decision.deletes == [] and decision.requeue_after == RETRY_SOON


def test_namesake_policy_lets_a_job_start_beside_a_namesakes_pod():
    observed = Observed(taken=frozenset({"demo-node-0"}))
    assert namesake_policy(context_for(namesake_policy, job(status=PENDING), observed)) is None


# ----- config_service_policy ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config_map", "service", "expected"),
    [
        (False, False, ["ConfigMap", "Service"]),
        (True, False, ["Service"]),
        (False, True, ["ConfigMap"]),
        (True, True, []),
    ],
)
def test_config_service_policy_creates_what_is_missing_and_hands_on(config_map, service, expected):
    ctx = context_for(config_service_policy, job(), Observed(config_map=config_map, service=service))
    assert config_service_policy(ctx) is None
    assert kinds(ctx.decision) == expected


# ----- suspend_policy -----------------------------------------------------------------------------------------------


def test_suspend_policy_deletes_the_pods_and_keeps_the_job():
    suspended = job(status=RUNNING, runPolicy={"suspend": True})
    decision = suspend_policy(context_for(suspend_policy, suspended, seen(pod(0), pod(1))))
    assert decision.status["phase"] == "Suspended" and "startTime" not in decision.status
    assert deleted(decision) == ["demo-node-0", "demo-node-1"] and decision.creates == []
    assert cond(decision, "Suspended")["status"] == "True" and cond(decision, "Running")["status"] == "False"
    assert reasons(decision) == [("Normal", "Suspended")]


def test_suspend_policy_says_so_once_and_requeues_while_pods_terminate():
    stored = {"phase": "Suspended", "restarts": 0}
    suspended = job(status=stored, runPolicy={"suspend": True})
    decision = suspend_policy(context_for(suspend_policy, suspended, seen(pod(0, terminating=True))))
    assert decision.events == [] and decision.deletes == [] and decision.requeue_after == RETRY_SOON
    assert decision.status["active"] == 0


def test_suspend_policy_ends_a_restart_in_progress():
    decision = suspend_policy(context_for(suspend_policy, job(status=RESTARTING, runPolicy={"suspend": True}), seen()))
    assert cond(decision, "Restarting")["status"] == "False"
    assert cond(decision, "Restarting")["reason"] == "JobSuspended"


def test_suspend_policy_resumes_a_suspended_job_as_pending_and_hands_on():
    ctx = context_for(suspend_policy, job(status={"phase": "Suspended", "restarts": 0}), seen())
    assert suspend_policy(ctx) is None
    assert ctx.status.phase == "Pending"
    assert ctx.condition("Suspended").status == "False" and ctx.condition("Suspended").reason == "Resumed"
    assert reasons(ctx.decision) == [("Normal", "Resumed")]


def test_suspend_policy_leaves_a_job_that_never_was_suspended_alone():
    ctx = context_for(suspend_policy, job(status=RUNNING), seen(pod(0), pod(1)))
    assert suspend_policy(ctx) is None
    assert ctx.status.phase == "Running" and ctx.decision.events == [] and ctx.decision.deletes == []


# ----- deadline_policy ----------------------------------------------------------------------------------------------


def started(seconds_ago: int) -> dict[str, object]:
    return {**RUNNING, "startTime": rfc3339(NOW - timedelta(seconds=seconds_ago))}


def test_deadline_policy_fails_a_job_past_its_active_deadline_and_stops_its_pods():
    late = job(status=started(61), runPolicy={"activeDeadlineSeconds": 60})
    decision = deadline_policy(context_for(deadline_policy, late, seen(pod(0), pod(1))))
    assert decision.status["phase"] == "Failed" and cond(decision, "Failed")["reason"] == "DeadlineExceeded"
    assert deleted(decision) == ["demo-node-0", "demo-node-1"]


def test_deadline_policy_requeues_at_the_deadline_before_it():
    ctx = context_for(deadline_policy, job(status=started(40), runPolicy={"activeDeadlineSeconds": 60}), seen())
    assert deadline_policy(ctx) is None and ctx.decision.requeue_after == 20


@pytest.mark.parametrize(
    "unbounded", [job(status=started(10_000)), job(status=PENDING, runPolicy={"activeDeadlineSeconds": 60})]
)
def test_deadline_policy_ignores_a_job_without_deadline_or_not_started(unbounded):
    ctx = context_for(deadline_policy, unbounded, seen())
    assert deadline_policy(ctx) is None and ctx.decision.requeue_after is None


# ----- attempt_policy -----------------------------------------------------------------------------------------------


def test_attempt_policy_counts_the_current_attempt_and_deletes_earlier_ones():
    status = {**RESTARTING, "phase": "Restarting"}
    observed = seen(pod(0, attempt=1), pod(1, "Failed", attempt=0), pod(1, attempt=1, ready=False))
    ctx = context_for(attempt_policy, job(status=status), observed)
    assert attempt_policy(ctx) is None
    assert [(p.rank, p.attempt) for p in ctx.current] == [(0, 1), (1, 1)]
    assert ctx.decision.deletes == [("Pod", "demo-node-1")]  # the attempt-0 pod of the same name
    assert (ctx.status.active, ctx.status.ready, ctx.status.failed) == (2, 1, 0)


def test_attempt_policy_drops_ranks_beyond_the_node_count():
    ctx = context_for(attempt_policy, job(status=RUNNING, nodes=1), seen(pod(0), pod(1)))
    attempt_policy(ctx)
    assert [p.rank for p in ctx.current] == [0] and ctx.decision.deletes == [("Pod", "demo-node-1")]


# ----- failure_policy -----------------------------------------------------------------------------------------------


def after_failure(status: dict[str, object], *pods):
    return failure_policy(context_for(failure_policy, job(status=status), seen(*pods)))


def test_failure_policy_hands_on_while_nothing_failed():
    assert after_failure(RUNNING, pod(0), pod(1, "Succeeded")) is None


def test_failure_policy_permanent_exit_fails_the_job_without_restart():
    decision = after_failure(RUNNING, pod(0), pod(1, "Failed", exit_code=79))
    assert decision.status["phase"] == "Failed" and decision.status["restarts"] == 0
    assert cond(decision, "Failed")["reason"] == "Diverged"
    assert decision.deletes == [("Pod", "demo-node-0")]  # the failed pod stays for its logs


def test_failure_policy_permanent_failure_wins_over_a_retryable_one_of_a_lower_rank():
    decision = after_failure(RUNNING, pod(0, "Failed", exit_code=1), pod(1, "Failed", exit_code=78))
    assert decision.status["phase"] == "Failed" and cond(decision, "Failed")["reason"] == "InvalidConfig"


def test_failure_policy_retryable_exit_restarts_the_whole_gang():
    decision = after_failure(RUNNING, pod(0), pod(1, "Failed", exit_code=1))
    assert decision.status["phase"] == "Restarting" and decision.status["restarts"] == 1
    assert deleted(decision) == ["demo-node-0", "demo-node-1"] and decision.creates == []
    assert (
        cond(decision, "Restarting")["reason"] == "PodFailed" and cond(decision, "Running")["reason"] == "GangRestart"
    )
    assert reasons(decision) == [("Normal", "GangRestart")] and "gang restart 1/2" in decision.events[0].message
    assert decision.requeue_after == RETRY_SOON
    assert decision.status["active"] == 0  # the counts are the new attempt's, which has no pods yet


@pytest.mark.parametrize(("broken", "reason"), DISRUPTED_NODE_1)
def test_failure_policy_eviction_or_node_loss_restarts_the_gang(broken, reason):
    decision = after_failure(RUNNING, pod(0), broken)
    assert decision.status["phase"] == "Restarting" and cond(decision, "Restarting")["reason"] == reason


def test_failure_policy_a_pod_vanished_while_running_is_lost():
    decision = after_failure(RUNNING, pod(0))
    assert cond(decision, "Restarting")["reason"] == "PodLost" and "node 1 (demo-node-1)" in decision.events[0].message


def test_failure_policy_a_pod_missing_before_the_job_ran_is_not_a_failure():
    assert after_failure(PENDING, pod(0)) is None


def test_failure_policy_the_lowest_failed_rank_names_the_restart():
    decision = after_failure(RUNNING, pod(1, "Failed", exit_code=2), pod(0, "Failed", exit_code=1))
    assert "node 0 (demo-node-0)" in cond(decision, "Restarting")["message"]


def test_failure_policy_ignores_a_failed_pod_already_being_deleted():
    assert after_failure(RUNNING, pod(0), pod(1, "Failed", exit_code=1, terminating=True)) is None


def test_failure_policy_fails_the_job_once_the_backoff_limit_is_spent():
    decision = after_failure({**RUNNING, "restarts": 2}, pod(0, attempt=2), pod(1, "Failed", attempt=2, exit_code=1))
    assert decision.status["phase"] == "Failed" and decision.status["restarts"] == 2
    assert cond(decision, "Failed")["reason"] == "BackoffLimitExceeded"
    assert "backoffLimit 2 reached after 2 restarts" in cond(decision, "Failed")["message"]
    assert reasons(decision) == [("Warning", "BackoffLimitExceeded")]


def test_failure_policy_failing_during_a_restart_closes_the_restarting_condition():
    decision = after_failure(RESTARTING, pod(0, attempt=1), pod(1, "Failed", attempt=1, exit_code=78))
    assert (
        cond(decision, "Restarting")["status"] == "False" and cond(decision, "Restarting")["reason"] == "InvalidConfig"
    )


# ----- success_policy -----------------------------------------------------------------------------------------------


def after_success(status: dict[str, object], *pods, **spec):
    return success_policy(context_for(success_policy, job(status=status, **spec), seen(*pods)))


def test_success_policy_every_node_pod_succeeded_makes_the_job_succeeded():
    decision = after_success(RUNNING, pod(0, "Succeeded"), pod(1, "Succeeded"))
    assert decision.status["phase"] == "Succeeded" and decision.status["completionTime"] == rfc3339(NOW)
    assert (
        cond(decision, "Succeeded")["reason"] == "AllNodesSucceeded" and cond(decision, "Running")["status"] == "False"
    )
    assert reasons(decision) == [("Normal", "Succeeded")]
    assert decision.status["succeeded"] == 2 and decision.status["active"] == 0


def test_success_policy_one_pod_succeeded_is_not_enough():
    assert after_success(RUNNING, pod(0, "Succeeded"), pod(1)) is None


def test_success_policy_takes_the_final_progress_from_the_exit_summary():
    summary = '{"llmtrain": true, "exitCode": 0, "step": 40, "totalSteps": 40, "loss": 4.2}'
    decision = after_success(RUNNING, pod(0, "Succeeded"), pod(1, "Succeeded", termination_message=summary))
    assert decision.status["progress"] == {"step": 40, "totalSteps": 40, "loss": 4.2, "eta": "0s"}


def test_success_policy_takes_the_final_validation_loss_from_the_exit_summary():
    # A short run's last evaluation comes after the operator's last scrape of rank 0's metrics.
    summary = '{"llmtrain": true, "exitCode": 0, "step": 40, "totalSteps": 40, "loss": 4.2, "evalLoss": 4.51234}'
    decision = after_success(RUNNING, pod(0, "Succeeded"), pod(1, "Succeeded", termination_message=summary))
    assert decision.status["progress"]["evalLoss"] == 4.5123


def test_success_policy_ends_a_restart_in_progress():
    decision = after_success(RESTARTING, pod(0, "Succeeded", 1), pod(1, "Succeeded", 1))
    assert cond(decision, "Restarting")["status"] == "False" and cond(decision, "Restarting")["reason"] == "Completed"


def test_success_policy_applies_the_clean_pod_policy():
    decision = after_success(RUNNING, pod(0, "Succeeded"), pod(1, "Succeeded"), runPolicy={"cleanPodPolicy": "All"})
    assert deleted(decision) == ["demo-node-0", "demo-node-1"]


# ----- pod_creation_policy ------------------------------------------------------------------------------------------


def creating(status: dict[str, object], observed: Observed) -> ReconcileContext:
    ctx = context_for(pod_creation_policy, job(status=status), observed)
    assert pod_creation_policy(ctx) is None
    return ctx


def test_pod_creation_policy_creates_the_missing_pods_of_the_current_attempt():
    ctx = creating({**RESTARTING, "phase": "Restarting"}, seen())
    assert names(ctx.decision) == ["demo-node-0", "demo-node-1"]
    assert {m["metadata"]["labels"]["llmtrain.dev/attempt"] for m in ctx.decision.creates} == {"1"}
    assert ctx.status.active == 0  # status counts only pods that exist: these are counted once they do
    assert ctx.decision.requeue_after is None


def test_pod_creation_policy_sets_the_start_time_once_and_says_created_once_the_pods_exist():
    first = creating(PENDING, seen())
    assert first.status.start_time == rfc3339(NOW) and first.decision.events == []
    assert first.condition("Created") is None  # not yet: the creates may still be rejected
    stored = {**PENDING, "startTime": first.status.start_time}
    exists = creating(stored, seen(pod(0, "Pending"), pod(1, "Pending")))
    assert exists.decision.creates == [] and reasons(exists.decision) == [("Normal", "Created")]
    assert exists.condition("Created").reason == "ChildrenCreated" and exists.status.active == 2
    stored = {
        **RESTARTING,
        "phase": "Restarting",
        "conditions": [exists.condition("Created").model_dump(by_alias=True)],
    }
    again = creating(stored, seen(pod(0, "Pending", attempt=1), pod(1, "Pending", attempt=1)))
    assert again.status.start_time == RESTARTING["startTime"] and again.decision.events == []


def test_pod_creation_policy_waits_for_names_still_taken_and_requeues():
    ctx = creating(PENDING, Observed(config_map=True, service=True, taken=frozenset({"demo-node-0"})))
    assert names(ctx.decision) == ["demo-node-1"] and ctx.decision.requeue_after == RETRY_SOON


def test_pod_creation_policy_requeues_while_old_pods_terminate():
    status = {**RESTARTING, "phase": "Restarting"}
    ctx = creating(status, seen(pod(0, terminating=True)))  # attempt 0 of rank 0: its name is still taken
    assert names(ctx.decision) == ["demo-node-1"] and ctx.decision.requeue_after == RETRY_SOON


def test_pod_creation_policy_re_renders_a_config_the_spec_has_outgrown():
    observed = Observed(config_map=True, service=True, config={"config.json": "{}"})
    ctx = creating(PENDING, observed)
    [update] = ctx.decision.updates
    assert update["kind"] == "ConfigMap" and json.loads(update["data"]["config.json"])["training"]["steps"] == 10
    assert ("Normal", "ConfigUpdated") in reasons(ctx.decision)


def test_pod_creation_policy_leaves_the_config_alone_when_no_pod_is_created():
    ctx = creating(
        RUNNING, Observed(pods=(pod(0), pod(1)), config_map=True, service=True, config={"config.json": "{}"})
    )
    assert ctx.decision.updates == [] and ctx.decision.creates == []


# ----- create_failure_policy ----------------------------------------------------------------------------------------

QUOTA = 'pods "demo-node-0" is forbidden: exceeded quota: no-pods'


def rejected(seconds_ago: float, message: str = QUOTA) -> Observed:
    return Observed(
        config_map=False, service=False, create_failure=CreateFailure(message, NOW - timedelta(seconds=seconds_ago))
    )


def test_create_failure_policy_reports_a_rejected_create_with_the_api_message_and_one_warning():
    ctx = context_for(create_failure_policy, job(status=PENDING), rejected(0))
    assert create_failure_policy(ctx) is None
    created = ctx.condition("Created")
    assert (created.status, created.reason, created.message) == ("False", "CreateFailed", QUOTA)
    assert reasons(ctx.decision) == [("Warning", "CreateFailed")]
    stored = {**PENDING, "conditions": [created.model_dump(by_alias=True)]}
    again = context_for(create_failure_policy, job(status=stored), rejected(1))
    create_failure_policy(again)
    assert again.decision.events == []  # the same message is not warned about twice


def test_create_failure_policy_holds_every_create_until_the_retry_is_due():
    decision = policies.reconcile(job(status=PENDING), rejected(1), NOW, SETTINGS)
    assert decision.creates == [] and decision.requeue_after == policies.CREATE_RETRY_SECONDS - 1
    assert decision.status.get("startTime") is None  # nothing started


def test_create_failure_policy_lets_the_retry_through_when_it_is_due():
    decision = policies.reconcile(job(status=PENDING), rejected(policies.CREATE_RETRY_SECONDS), NOW, SETTINGS)
    assert kinds(decision) == ["ConfigMap", "Service", "Pod", "Pod"]
    assert cond(decision, "Created")["reason"] == "CreateFailed"  # until the pods exist


def test_create_failure_policy_hands_on_when_nothing_was_rejected():
    ctx = context_for(create_failure_policy, job(status=PENDING), seen())
    assert create_failure_policy(ctx) is None and not ctx.hold_creates and ctx.condition("Created") is None


# ----- running_policy -----------------------------------------------------------------------------------------------


def test_running_policy_every_node_pod_running_makes_the_job_running():
    decision = running_policy(context_for(running_policy, job(status=PENDING_CREATED), seen(pod(0), pod(1))))
    assert decision.status["phase"] == "Running" and cond(decision, "Running")["reason"] == "AllNodesRunning"
    assert reasons(decision) == [("Normal", "Running")]


def test_running_policy_a_running_job_stays_quiet():
    decision = running_policy(context_for(running_policy, job(status=RUNNING), seen(pod(0), pod(1))))
    assert decision.events == [] and decision.status["phase"] == "Running"


def test_running_policy_ends_a_gang_restart_as_recovered():
    decision = running_policy(
        context_for(running_policy, job(status=RESTARTING), seen(pod(0, attempt=1), pod(1, attempt=1)))
    )
    assert cond(decision, "Restarting")["status"] == "False" and cond(decision, "Restarting")["reason"] == "Recovered"
    assert "gang restarted 1 times" in cond(decision, "Restarting")["message"]


def test_running_policy_hands_on_while_a_pod_is_not_running():
    assert running_policy(context_for(running_policy, job(status=PENDING), seen(pod(0), pod(1, "Pending")))) is None


# ----- startup_policy -----------------------------------------------------------------------------------------------


def pending_since(seconds_ago: int, rank: int = 1, **fields) -> object:
    return pod(rank, "Pending", created=NOW - timedelta(seconds=seconds_ago), **fields)


def test_startup_policy_requeues_when_the_startup_timeout_of_a_pending_pod_expires():
    ctx = context_for(startup_policy, job(status=PENDING_CREATED), seen(pod(0), pending_since(100)))
    assert startup_policy(ctx) is None
    assert ctx.decision.requeue_after == 200 and ctx.decision.events == []  # default startupTimeoutSeconds: 300


def test_startup_policy_explains_pods_pending_too_long_with_one_warning():
    unschedulable = pending_since(400, unschedulable="0/2 nodes are available: 2 Insufficient nvidia.com/gpu.")
    ctx = context_for(startup_policy, job(status=PENDING_CREATED), seen(pod(0), unschedulable))
    startup_policy(ctx)
    running = ctx.condition("Running")
    assert running.status == "False" and running.reason == "Unschedulable"
    assert running.message.startswith("1 node pod(s) Pending over 300s; demo-node-1: 0/2 nodes are available")
    assert [reason for reason in reasons(ctx.decision) if reason[0] == "Warning"] == [("Warning", "Unschedulable")]
    stored = {**PENDING_CREATED, "conditions": [c.model_dump(by_alias=True) for c in ctx.status.conditions]}
    again = context_for(startup_policy, job(status=stored), seen(pod(0), unschedulable))
    startup_policy(again)
    assert again.decision.events == []


def test_startup_policy_names_the_lowest_late_rank():
    late = [
        pending_since(400, 1, waiting_reason="ErrImagePull"),
        pending_since(500, 0, waiting_reason="ImagePullBackOff"),
    ]
    ctx = context_for(startup_policy, job(status=PENDING), seen(*late))
    startup_policy(ctx)
    assert ctx.condition("Running").reason == "ImagePullBackOff" and "2 node pod(s)" in ctx.condition("Running").message
