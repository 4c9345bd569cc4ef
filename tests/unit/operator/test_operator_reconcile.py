"""reconcile() end to end: every transition of the job state machine, from pure inputs to a Decision.

Each policy on its own: test_operator_policies.py.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from llmtrain_operator.api import Progress
from llmtrain_operator.observe import pod_view
from llmtrain_operator.reconcile import Observed, OperatorSettings, merge_patch, reconcile
from llmtrain_operator.timestamps import rfc3339
from reconcile_inputs import (
    DISRUPTED_NODE_1,
    NOW,
    PENDING_CREATED,
    RESTARTING,
    RUNNING,
    SETTINGS,
    SPEC,
    cond,
    job,
    kinds,
    pod,
    seen,
)


def test_new_job_creates_config_service_and_every_node_pod():
    d = reconcile(job(), Observed(), NOW, SETTINGS)
    assert kinds(d) == ["ConfigMap", "Service", "Pod", "Pod"]
    assert [m["metadata"]["name"] for m in d.creates[2:]] == ["demo-node-0", "demo-node-1"]
    assert d.status["phase"] == "Pending"
    assert d.status["startTime"] == rfc3339(NOW)
    assert d.status["active"] == 0  # status counts only pods that exist
    assert d.events == []


def test_the_job_is_created_once_its_pods_exist():
    d = reconcile(job(status={"phase": "Pending"}), seen(pod(0, "Pending"), pod(1, "Pending")), NOW, SETTINGS)
    assert d.creates == [] and d.status["active"] == 2
    assert cond(d, "Created")["status"] == "True" and [e.reason for e in d.events] == ["Created"]


def test_pods_pending_within_the_startup_timeout_wait_quietly():
    d = reconcile(job(status=PENDING_CREATED), seen(pod(0, "Pending"), pod(1, "Running")), NOW, SETTINGS)
    assert d.creates == [] and d.deletes == [] and d.events == []
    assert d.status["phase"] == "Pending" and d.status["active"] == 2 and d.status["ready"] == 1
    assert d.requeue_after is not None  # re-check when the startup timeout would expire


def test_all_node_pods_running_makes_the_job_running():
    d = reconcile(job(status=PENDING_CREATED), seen(pod(0), pod(1)), NOW, SETTINGS)
    assert d.status["phase"] == "Running"
    assert cond(d, "Running")["status"] == "True"
    assert [e.reason for e in d.events] == ["Running"]


def test_steady_state_needs_no_write():
    first = reconcile(job(status={"phase": "Pending"}), seen(pod(0), pod(1)), NOW, SETTINGS)
    again = reconcile(job(status=first.status), seen(pod(0), pod(1)), NOW + timedelta(seconds=10), SETTINGS)
    assert again.status_patch is None and again.creates == [] and again.deletes == [] and again.events == []


def test_reconcile_is_deterministic():
    args = (job(status=RUNNING), seen(pod(0), pod(1, "Failed", exit_code=1)), NOW, SETTINGS)
    assert reconcile(*args) == reconcile(*args)


def test_retryable_failure_restarts_the_whole_gang():
    d = reconcile(job(status=RUNNING), seen(pod(0), pod(1, "Failed", exit_code=1)), NOW, SETTINGS)
    assert d.status["phase"] == "Restarting" and d.status["restarts"] == 1
    assert sorted(d.deletes) == [("Pod", "demo-node-0"), ("Pod", "demo-node-1")]
    assert d.creates == []  # recreated only once the old pods are gone (same names)
    assert cond(d, "Restarting")["status"] == "True" and cond(d, "Restarting")["reason"] == "PodFailed"
    (event,) = d.events
    assert (event.type, event.reason) == ("Normal", "GangRestart") and "exit code 1" in event.message
    assert d.requeue_after is not None


def test_old_attempt_pods_still_terminating_block_recreation():
    status = {**RUNNING, "phase": "Restarting", "restarts": 1}
    d = reconcile(job(status=status), seen(pod(0, terminating=True), pod(1, "Failed", terminating=True)), NOW, SETTINGS)
    assert d.creates == [] and d.deletes == [] and d.status["restarts"] == 1 and d.requeue_after == 1.0


def test_after_the_old_pods_are_gone_the_next_attempt_is_created():
    status = {**RUNNING, "phase": "Restarting", "restarts": 1}
    d = reconcile(job(status=status), seen(), NOW, SETTINGS)
    assert kinds(d) == ["Pod", "Pod"]
    assert {m["metadata"]["labels"]["llmtrain.dev/attempt"] for m in d.creates} == {"1"}
    env = {e["name"]: e.get("value") for e in d.creates[0]["spec"]["containers"][0]["env"]}
    assert env["LLMTRAIN_RESTART_ATTEMPT"] == "1"


def test_restarted_gang_running_clears_restarting():
    restarting = {"type": "Restarting", "status": "True", "reason": "PodFailed", "lastTransitionTime": rfc3339(NOW)}
    status = {**RUNNING, "phase": "Restarting", "restarts": 1, "conditions": [restarting]}
    d = reconcile(job(status=status), seen(pod(0, attempt=1), pod(1, attempt=1)), NOW, SETTINGS)
    assert d.status["phase"] == "Running" and d.status["restarts"] == 1
    assert cond(d, "Restarting")["status"] == "False" and cond(d, "Restarting")["reason"] == "Recovered"
    assert cond(d, "Running")["status"] == "True"


def test_stale_pods_from_an_earlier_attempt_are_deleted_not_counted():
    """The operator died after writing restarts=1 but before deleting the pods: finish the job, don't recount."""
    status = {**RUNNING, "phase": "Restarting", "restarts": 1}
    d = reconcile(job(status=status), seen(pod(0), pod(1, "Failed", exit_code=1)), NOW, SETTINGS)
    assert sorted(d.deletes) == [("Pod", "demo-node-0"), ("Pod", "demo-node-1")]
    assert d.status["restarts"] == 1 and d.status["phase"] == "Restarting" and d.events == []


def test_backoff_limit_exhausted_fails_the_job():
    status = {**RUNNING, "restarts": 2}
    d = reconcile(job(status=status), seen(pod(0, attempt=2), pod(1, "Failed", attempt=2, exit_code=1)), NOW, SETTINGS)
    assert d.status["phase"] == "Failed" and d.status["restarts"] == 2
    assert cond(d, "Failed")["reason"] == "BackoffLimitExceeded"
    assert d.status["completionTime"] == rfc3339(NOW)
    assert d.deletes == [("Pod", "demo-node-0")]  # the still-running pod; the failed one stays for its logs
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "BackoffLimitExceeded")]


@pytest.mark.parametrize(
    ("failed", "reason"),
    [
        (pod(1, "Failed", exit_code=78), "InvalidConfig"),
        (pod(1, "Failed", exit_code=79), "Diverged"),
        (
            pod(
                1,
                "Failed",
                exit_code=1,
                termination_message='{"llmtrain": true, "exitCode": 79, "reason": "Diverged", "message": "loss nan"}',
            ),
            "Diverged",
        ),
        (
            pod(
                1,
                "Failed",
                exit_code=1,
                termination_message='log line\n{"llmtrain": true, "exitCode": 78, "reason": "InvalidConfig"}\n',
            ),
            "InvalidConfig",
        ),
    ],
)
def test_permanent_failures_fail_at_once_without_restart(failed, reason):
    d = reconcile(job(status=RUNNING), seen(pod(0), failed), NOW, SETTINGS)
    assert d.status["phase"] == "Failed" and d.status["restarts"] == 0
    assert cond(d, "Failed")["reason"] == reason
    assert ("Pod", "demo-node-0") in d.deletes


def test_termination_message_with_a_retryable_code_still_restarts():
    msg = '{"llmtrain": true, "exitCode": 1, "reason": "Error", "message": "nccl timeout"}'
    d = reconcile(
        job(status=RUNNING), seen(pod(0), pod(1, "Failed", exit_code=1, termination_message=msg)), NOW, SETTINGS
    )
    assert d.status["phase"] == "Restarting"


@pytest.mark.parametrize(("broken", "reason"), DISRUPTED_NODE_1)
def test_evicted_or_lost_pods_restart_the_gang_without_using_the_backoff_limit(broken, reason):
    d = reconcile(job(status=RUNNING, runPolicy={"backoffLimit": 0}), seen(pod(0), broken), NOW, SETTINGS)
    assert d.status["phase"] == "Restarting" and d.status["restarts"] == 0
    assert d.status["disruptions"] == 1 and d.status["attempt"] == 1
    assert cond(d, "Restarting")["reason"] == reason
    assert ("Normal", "Disrupted") in [(e.type, e.reason) for e in d.events]


@pytest.mark.parametrize(("broken", "reason"), DISRUPTED_NODE_1)
def test_count_disruptions_charges_them_against_the_backoff_limit(broken, reason):
    policy = {"backoffLimit": 0, "countDisruptions": True}
    d = reconcile(job(status=RUNNING, runPolicy=policy), seen(pod(0), broken), NOW, SETTINGS)
    assert d.status["phase"] == "Failed" and cond(d, "Failed")["reason"] == "BackoffLimitExceeded"


def test_a_pod_vanishing_while_running_restarts_the_gang():
    d = reconcile(job(status=RUNNING), seen(pod(0)), NOW, SETTINGS)
    assert d.status["phase"] == "Restarting" and cond(d, "Restarting")["reason"] == "PodLost"


def test_a_missing_pod_while_pending_is_just_created():
    d = reconcile(job(status={"phase": "Pending"}), seen(pod(0)), NOW, SETTINGS)
    assert [m["metadata"]["name"] for m in d.creates] == ["demo-node-1"] and d.status["restarts"] == 0


def test_all_pods_succeeded_makes_the_job_succeeded():
    d = reconcile(job(status=RUNNING), seen(pod(0, "Succeeded"), pod(1, "Succeeded")), NOW, SETTINGS)
    assert d.status["phase"] == "Succeeded" and d.status["completionTime"] == rfc3339(NOW)
    assert cond(d, "Succeeded")["status"] == "True"
    assert d.deletes == []  # cleanPodPolicy Running: finished pods stay for their logs
    assert d.status["succeeded"] == 2 and d.status["active"] == 0


def test_success_takes_final_progress_from_rank_0_exit_summary():
    """The last metrics scrape may be a resync old; rank 0's termination message is exact."""
    last_sample = {"progress": {"step": 35, "totalSteps": 40, "loss": 5.1, "tokensPerSecond": 900.0, "eta": "3s"}}
    summary = '{"llmtrain": true, "exitCode": 0, "step": 40, "totalSteps": 40, "loss": 4.2, "lastCheckpointStep": 40}'
    d = reconcile(
        job(status={**RUNNING, **last_sample}),
        seen(pod(0, "Succeeded"), pod(1, "Succeeded", termination_message=summary)),
        NOW,
        SETTINGS,
    )
    assert d.status["progress"] == {
        "step": 40,
        "totalSteps": 40,
        "loss": 4.2,
        "lastCheckpointStep": 40,
        "tokensPerSecond": 900.0,
        "eta": "0s",
    }


def test_one_pod_succeeded_while_others_run_keeps_waiting():
    d = reconcile(job(status=RUNNING), seen(pod(0, "Succeeded"), pod(1)), NOW, SETTINGS)
    assert d.status["phase"] == "Running" and d.deletes == []


@pytest.mark.parametrize(
    ("policy", "deleted"),
    [("All", ["demo-node-0", "demo-node-1"]), ("Running", ["demo-node-1"]), ("None", [])],
)
def test_clean_pod_policy_on_a_finished_job(policy, deleted):
    status = {"phase": "Failed", "completionTime": rfc3339(NOW)}
    d = reconcile(
        job(status=status, runPolicy={"cleanPodPolicy": policy}), seen(pod(0, "Failed"), pod(1)), NOW, SETTINGS
    )
    assert sorted(n for _, n in d.deletes) == deleted
    assert d.status["phase"] == "Failed"


def test_ttl_after_finished_deletes_the_job_when_due():
    done = {"phase": "Succeeded", "completionTime": rfc3339(NOW - timedelta(seconds=100))}
    early = reconcile(job(status=done, runPolicy={"ttlSecondsAfterFinished": 300}), seen(), NOW, SETTINGS)
    assert not early.delete_job and early.requeue_after == 200
    due = reconcile(job(status=done, runPolicy={"ttlSecondsAfterFinished": 60}), seen(), NOW, SETTINGS)
    assert due.delete_job


def test_terminal_jobs_ignore_later_failures_and_spec_edits():
    done = {"phase": "Succeeded", "completionTime": rfc3339(NOW)}
    d = reconcile(job(status=done, nodes=0), seen(pod(0, "Failed", exit_code=1)), NOW, SETTINGS)
    assert d.status["phase"] == "Succeeded" and d.events == [] and d.creates == []


def test_active_deadline_exceeded_fails_the_job_and_stops_its_pods():
    status = {**RUNNING, "startTime": rfc3339(NOW - timedelta(seconds=61))}
    d = reconcile(job(status=status, runPolicy={"activeDeadlineSeconds": 60}), seen(pod(0), pod(1)), NOW, SETTINGS)
    assert d.status["phase"] == "Failed" and cond(d, "Failed")["reason"] == "DeadlineExceeded"
    assert sorted(n for _, n in d.deletes) == ["demo-node-0", "demo-node-1"]


def test_active_deadline_not_reached_requeues_at_the_deadline():
    status = {**RUNNING, "startTime": rfc3339(NOW - timedelta(seconds=40))}
    d = reconcile(job(status=status, runPolicy={"activeDeadlineSeconds": 60}), seen(pod(0), pod(1)), NOW, SETTINGS)
    assert d.status["phase"] == "Running" and d.requeue_after == 20


def test_suspend_deletes_pods_and_keeps_the_rest():
    d = reconcile(job(status=RUNNING, runPolicy={"suspend": True}), seen(pod(0), pod(1)), NOW, SETTINGS)
    assert d.status["phase"] == "Suspended" and "startTime" not in d.status
    assert sorted(n for _, n in d.deletes) == ["demo-node-0", "demo-node-1"] and d.creates == []
    assert cond(d, "Suspended")["status"] == "True"
    assert [e.reason for e in d.events] == ["Suspended"]


def test_a_job_created_suspended_gets_config_and_service_but_no_pods():
    d = reconcile(job(runPolicy={"suspend": True}), Observed(), NOW, SETTINGS)
    assert kinds(d) == ["ConfigMap", "Service"] and d.status["phase"] == "Suspended"


def test_resume_recreates_the_pods():
    status = {"phase": "Suspended", "restarts": 0, "conditions": []}
    d = reconcile(job(status=status, runPolicy={"suspend": False}), seen(), NOW, SETTINGS)
    assert kinds(d) == ["Pod", "Pod"] and d.status["phase"] == "Pending"
    assert cond(d, "Suspended")["status"] == "False" and cond(d, "Suspended")["reason"] == "Resumed"
    assert "Resumed" in [e.reason for e in d.events]


def test_invalid_spec_fails_with_invalid_spec_and_creates_nothing():
    bad = {"model": {"dim": 64, "layers": 2, "heads": 6}, "parallelism": {"tensorParallel": 4}, "procsPerNode": 4}
    d = reconcile(job(**bad), Observed(), NOW, SETTINGS)
    assert d.creates == [] and d.status["phase"] == "Failed"
    assert cond(d, "Failed")["reason"] == "InvalidSpec"
    (event,) = d.events
    assert event.type == "Warning" and event.reason == "InvalidSpec"
    assert "spec.parallelism.tensorParallel" in event.message


def test_invalid_spec_is_reported_once():
    bad = job(training={"steps": 10, "globalBatchSize": 3})
    first = reconcile(bad, Observed(), NOW, SETTINGS)
    again = reconcile(job(status=first.status, training={"steps": 10, "globalBatchSize": 3}), Observed(), NOW, SETTINGS)
    assert again.events == [] and again.status_patch is None


def test_pods_pending_past_the_startup_timeout_get_a_warning_that_says_why():
    late = NOW - timedelta(seconds=400)
    pending = pod(1, "Pending", created=late, unschedulable="0/2 nodes are available: 2 Insufficient nvidia.com/gpu.")
    d = reconcile(job(status=PENDING_CREATED), seen(pod(0), pending), NOW, SETTINGS)
    running = cond(d, "Running")
    assert running["status"] == "False" and running["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in running["message"]
    assert [(e.type, e.reason) for e in d.events] == [("Normal", "WaitingForCapacity"), ("Warning", "Unschedulable")]
    again = reconcile(job(status=d.status), seen(pod(0), pending), NOW + timedelta(seconds=10), SETTINGS)
    assert again.events == []  # same reason, no repeated warning


def test_image_pull_errors_are_named_in_the_condition():
    late = NOW - timedelta(seconds=400)
    pulling = pod(0, "Pending", created=late, waiting_reason="ImagePullBackOff", waiting_message="no such image")
    d = reconcile(job(status={"phase": "Pending"}), seen(pulling, pod(1)), NOW, SETTINGS)
    assert cond(d, "Running")["reason"] == "ImagePullBackOff"
    assert "no such image" in cond(d, "Running")["message"]


def test_progress_sample_lands_in_status():
    sample = Progress(step=5, total_steps=10, loss=2.5, tokens_per_second=1000.0, eta="5s")
    d = reconcile(job(status=RUNNING), seen(pod(0), pod(1)), NOW, SETTINGS, progress=sample)
    assert d.status["progress"] == {
        "step": 5,
        "totalSteps": 10,
        "loss": 2.5,
        "tokensPerSecond": 1000.0,
        "eta": "5s",
        "lastStepTime": rfc3339(NOW),  # first seen now: the stall clock
    }
    assert d.status_patch["progress"] == d.status["progress"]
    assert "phase" not in d.status_patch  # the phase stays
    assert cond(d, "Progressing")["status"] == "True"


def test_dev_command_annotation_is_honoured_only_when_the_operator_allows_it():
    annotations = {"llmtrain.dev/dev-command": json.dumps(["python", "-c", "pass"])}
    plain = reconcile(job(annotations=annotations), Observed(), NOW, SETTINGS)
    assert plain.creates[2]["spec"]["containers"][0]["command"][0] == "torchrun"
    allowed = OperatorSettings(default_image="x", allow_dev_command=True)
    hooked = reconcile(job(annotations=annotations), Observed(), NOW, allowed)
    assert hooked.creates[2]["spec"]["containers"][0]["command"] == ["python", "-c", "pass"]


def test_merge_patch_nulls_removed_keys_and_recurses_into_objects():
    old = {"phase": "Running", "startTime": "t", "progress": {"step": 1, "loss": 2.0}}
    new = {"phase": "Suspended", "progress": {"step": 1, "loss": 1.0}}
    assert merge_patch(old, new) == {"startTime": None, "phase": "Suspended", "progress": {"loss": 1.0}}
    assert merge_patch(new, new) == {}


# ----- a job re-created under the name of a deleted one -----


def test_pods_of_a_deleted_namesake_hold_their_names_until_garbage_collected():
    """kubectl delete + apply: the old job's pods linger a moment; the new job must neither adopt nor clash."""
    status = {"phase": "Pending", "restarts": 0}
    d = reconcile(
        job(status=status),
        Observed(pods=(), config_map=True, service=True, taken=frozenset({"demo-node-0"})),
        NOW,
        SETTINGS,
    )
    assert [m["metadata"]["name"] for m in d.creates] == ["demo-node-1"]
    assert d.requeue_after == 1.0


def test_a_namesakes_config_map_blocks_pod_creation_until_it_is_gone():
    """Pods started now would mount the deleted job's config."""
    d = reconcile(job(status={"phase": "Pending"}), Observed(taken=frozenset({"demo-config"})), NOW, SETTINGS)
    assert d.creates == [] and d.requeue_after == 1.0


def test_pod_view_records_its_controlling_owner():
    body = {
        "metadata": {
            "name": "demo-node-0",
            "labels": {"llmtrain.dev/node-rank": "0"},
            "ownerReferences": [{"kind": "LLMTrainingJob", "uid": "uid-1", "controller": True}],
        }
    }
    assert pod_view(body).owner_uid == "uid-1"


# ----- the Restarting condition ends with the restart -----


def test_success_straight_from_restarting_clears_the_restarting_condition():
    d = reconcile(job(status=RESTARTING), seen(pod(0, "Succeeded", 1), pod(1, "Succeeded", 1)), NOW, SETTINGS)
    assert d.status["phase"] == "Succeeded"
    assert cond(d, "Restarting")["status"] == "False"


def test_suspending_a_restarting_job_clears_the_restarting_condition():
    d = reconcile(job(status=RESTARTING, runPolicy={"suspend": True}), seen(), NOW, SETTINGS)
    assert d.status["phase"] == "Suspended"
    assert cond(d, "Restarting")["status"] == "False"


# ----- edits reach the trainer at the next attempt -----


def _config_data(**training: Any) -> dict[str, str]:
    from llmtrain_operator.api import LLMTrainingJobSpec
    from llmtrain_operator.builders import build_config_map

    # parallelism.sharding as the operator resolves it for this CPU job (unset in SPEC: zero3)
    raw = {**SPEC, "parallelism": {"sharding": "zero3"}, "training": {**SPEC["training"], **training}}
    return build_config_map(job().ref, LLMTrainingJobSpec.model_validate(raw))["data"]


def test_a_new_attempt_re_renders_a_config_the_spec_has_outgrown():
    """e.g. steps raised while suspended: the resumed pods must train to the new count."""
    stale = _config_data(steps=5)
    d = reconcile(
        job(status={"phase": "Pending", "restarts": 0}),
        Observed(config_map=True, service=True, config=stale),
        NOW,
        SETTINGS,
    )
    [update] = d.updates
    assert update["kind"] == "ConfigMap" and update["data"] == _config_data()
    assert json.loads(update["data"]["config.json"])["training"]["steps"] == 10
    assert [m["kind"] for m in d.creates] == ["Pod", "Pod"]
    assert any(e.reason == "ConfigUpdated" for e in d.events)


def test_an_unchanged_config_is_left_alone():
    d = reconcile(
        job(status={"phase": "Pending"}), Observed(config_map=True, service=True, config=_config_data()), NOW, SETTINGS
    )
    assert d.updates == [] and [m["kind"] for m in d.creates] == ["Pod", "Pod"]
