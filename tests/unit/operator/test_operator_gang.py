"""Shared clusters: all-or-nothing gangs, queues, disruptions that are not failures, resizes by checkpointed restart."""

from __future__ import annotations

from dataclasses import replace

from llmtrain_operator.reconcile import reconcile
from reconcile_inputs import NOW, RUNNING, SETTINGS, cond, job, pod, seen

NATIVE = replace(SETTINGS, native_gang=True)
BATCH_12 = {"steps": 10, "globalBatchSize": 12}  # divisible by 1, 2, 3 and 4 data-parallel ranks


def kinds(decision) -> list[str]:
    return [manifest["kind"] for manifest in decision.creates]


def test_auto_gang_uses_a_native_pod_group_per_attempt_when_the_api_server_serves_it():
    d = reconcile(job(), seen(), NOW, NATIVE)
    assert kinds(d) == ["PodGroup", "Pod", "Pod"]
    group = d.creates[0]
    assert group["metadata"]["name"] == "demo-attempt-0"
    assert group["spec"] == {"schedulingPolicy": {"gang": {"minCount": 2}}}
    assert group["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert all(p["spec"]["schedulingGroup"] == {"podGroupName": "demo-attempt-0"} for p in d.creates[1:])
    assert d.status["gang"] == "native"
    created = reconcile(job(status=d.status), seen(pod(0, "Pending"), pod(1, "Pending")), NOW, NATIVE)
    assert "gang placement: native" in cond(created, "Created")["message"]


def test_auto_gang_places_pods_one_by_one_where_pod_groups_are_not_served():
    d = reconcile(job(), seen(), NOW, SETTINGS)
    assert kinds(d) == ["Pod", "Pod"] and "schedulingGroup" not in d.creates[0]["spec"]
    assert d.status["gang"] == "none"


def test_gang_none_opts_out_even_where_pod_groups_are_served():
    d = reconcile(job(scheduling={"gang": "none"}), seen(), NOW, NATIVE)
    assert kinds(d) == ["Pod", "Pod"]


def test_native_gang_asked_for_but_not_served_fails_before_any_pod():
    d = reconcile(job(scheduling={"gang": "native"}), seen(), NOW, SETTINGS)
    assert d.status["phase"] == "Failed" and cond(d, "Failed")["reason"] == "GangSchedulingUnavailable"
    assert d.creates == [] and ("Warning", "GangSchedulingUnavailable") in [(e.type, e.reason) for e in d.events]


def test_a_queued_job_is_one_kueue_pod_group_per_attempt():
    d = reconcile(job(scheduling={"queueName": "team-a"}), seen(), NOW, NATIVE)
    assert kinds(d) == ["Pod", "Pod"] and d.status["gang"] == "kueue"
    for manifest in d.creates:
        labels, annotations = manifest["metadata"]["labels"], manifest["metadata"]["annotations"]
        assert labels["kueue.x-k8s.io/queue-name"] == "team-a"
        assert labels["kueue.x-k8s.io/pod-group-name"] == "demo-attempt-0"
        assert annotations["kueue.x-k8s.io/pod-group-total-count"] == "2"
        assert "schedulingGroup" not in manifest["spec"]  # Kueue's webhook would drop it


def test_pods_held_by_kueue_make_the_job_queued_at_once():
    gated = [pod(rank, "Pending", gated=True) for rank in (0, 1)]
    d = reconcile(job(status={"phase": "Pending", "gang": "kueue"}), seen(*gated), NOW, SETTINGS)
    queued = cond(d, "Queued")
    assert d.status["phase"] == "Pending" and queued["status"] == "True" and queued["reason"] == "QueuedByKueue"
    assert [(e.type, e.reason) for e in d.events] == [("Normal", "Created"), ("Normal", "QueuedByKueue")]


def test_unschedulable_pods_wait_for_capacity_with_the_schedulers_message():
    waiting = pod(1, "Pending", unschedulable="0/4 nodes are available: 4 Insufficient nvidia.com/gpu.")
    d = reconcile(job(status={"phase": "Pending"}), seen(pod(0, "Pending"), waiting), NOW, SETTINGS)
    queued = cond(d, "Queued")
    assert queued["reason"] == "WaitingForCapacity" and "Insufficient nvidia.com/gpu" in queued["message"]


def test_queued_turns_false_once_every_pod_is_placed():
    held = reconcile(
        job(status={"phase": "Pending"}), seen(*[pod(r, "Pending", gated=True) for r in (0, 1)]), NOW, SETTINGS
    )
    placed = reconcile(job(status=held.status), seen(pod(0, "Pending"), pod(1, "Pending")), NOW, SETTINGS)
    assert cond(placed, "Queued")["status"] == "False" and cond(placed, "Queued")["reason"] == "Admitted"


def test_an_eviction_in_progress_restarts_the_gang_before_the_pod_is_gone():
    evicting = pod(1, terminating=True, disrupted=True, disruption="EvictionByEvictionAPI: Eviction API: evicting")
    d = reconcile(job(status=RUNNING, runPolicy={"backoffLimit": 0}), seen(pod(0), evicting), NOW, SETTINGS)
    assert d.status["phase"] == "Restarting" and d.status["disruptions"] == 1 and d.status["restarts"] == 0
    assert "EvictionByEvictionAPI" in cond(d, "Restarting")["message"]
    assert ("Pod", "demo-node-0") in d.deletes


def test_the_next_attempt_after_a_disruption_creates_pods_of_that_attempt_and_a_new_pod_group():
    status = {**RUNNING, "phase": "Restarting", "attempt": 1, "disruptions": 1, "gang": "native", "nodes": 2}
    d = reconcile(job(status=status), seen(), NOW, NATIVE)
    assert kinds(d) == ["PodGroup", "Pod", "Pod"] and d.creates[0]["metadata"]["name"] == "demo-attempt-1"
    assert all(m["metadata"]["labels"]["llmtrain.dev/attempt"] == "1" for m in d.creates[1:])


def test_a_disruption_deletes_the_native_pod_group_of_the_attempt_it_ends():
    status = {**RUNNING, "gang": "native", "nodes": 2, "procsPerNode": 1}
    d = reconcile(job(status=status), seen(pod(0), pod(1, "Unknown")), NOW, NATIVE)
    assert ("PodGroup", "demo-attempt-0") in d.deletes and d.status["attempt"] == 1


def test_status_written_before_attempts_were_counted_keeps_its_pods():
    old = {**RUNNING, "restarts": 2}  # an older operator's status: the attempt was the restart count
    d = reconcile(job(status=old), seen(pod(0, attempt=2), pod(1, attempt=2)), NOW, SETTINGS)
    assert d.deletes == [] and d.status["attempt"] == 2 and d.status["phase"] == "Running"


def test_more_nodes_on_a_running_job_stop_the_gang_at_a_checkpoint_and_resume_larger_without_counting():
    running = {**RUNNING, "nodes": 2, "procsPerNode": 1}
    d = reconcile(
        job(status=running, nodes=3, training=BATCH_12, runPolicy={"backoffLimit": 0}),
        seen(pod(0), pod(1)),
        NOW,
        SETTINGS,
    )
    assert d.status["phase"] == "Restarting" and d.status["restarts"] == 0 and d.status["attempt"] == 1
    assert cond(d, "Resized")["status"] == "True" and "2x1 to 3x1" in cond(d, "Resized")["message"]
    assert {("Pod", "demo-node-0"), ("Pod", "demo-node-1")} <= set(d.deletes)
    nxt = reconcile(job(status=d.status, nodes=3, training=BATCH_12), seen(), NOW, SETTINGS)
    assert [m["metadata"]["name"] for m in nxt.creates] == ["demo-node-0", "demo-node-1", "demo-node-2"]
    assert "--nnodes=3" in nxt.creates[0]["spec"]["containers"][0]["command"]


def test_fewer_nodes_restart_every_rank_at_the_new_size_instead_of_dropping_one():
    running = {**RUNNING, "nodes": 2, "procsPerNode": 1}
    d = reconcile(job(status=running, nodes=1), seen(pod(0), pod(1)), NOW, SETTINGS)
    assert ("Pod", "demo-node-0") in d.deletes and d.status["attempt"] == 1 and d.status["nodes"] == 1


def test_resuming_a_suspended_job_at_a_new_size_says_resized():
    suspended = {"phase": "Suspended", "nodes": 2, "procsPerNode": 1}
    d = reconcile(job(status=suspended, nodes=4, training=BATCH_12), seen(), NOW, SETTINGS)
    assert ("Normal", "Resized") in [(e.type, e.reason) for e in d.events]
    assert len([m for m in d.creates if m["kind"] == "Pod"]) == 4
