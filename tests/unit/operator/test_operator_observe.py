"""Pod manifests -> PodView, failure classification, progress parsing, expectations, CLI and RBAC data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from llmtrain_operator import rbac
from llmtrain_operator.expectations import Expectations
from llmtrain_operator.main import parse_args
from llmtrain_operator.observe import PodView, classify_failure, node_unreachable, pod_view
from llmtrain_operator.progress import parse_progress

POD = {
    "metadata": {
        "name": "demo-node-1",
        "labels": {"llmtrain.dev/job-name": "demo", "llmtrain.dev/node-rank": "1", "llmtrain.dev/attempt": "2"},
        "creationTimestamp": "2026-01-01T12:00:00Z",
    },
    "status": {
        "phase": "Failed",
        "podIP": "10.88.0.7",
        "conditions": [{"type": "Ready", "status": "False"}, {"type": "DisruptionTarget", "status": "False"}],
        "containerStatuses": [
            {
                "name": "trainer",
                "state": {"terminated": {"exitCode": 1, "message": '{"llmtrain": true, "exitCode": 78}'}},
            }
        ],
    },
}


def test_pod_view_reads_rank_attempt_phase_exit_code_and_message():
    view = pod_view(POD)
    assert (view.name, view.rank, view.attempt, view.phase) == ("demo-node-1", 1, 2, "Failed")
    assert view.exit_code == 1 and view.ip == "10.88.0.7" and not view.ready and not view.disrupted
    assert view.created == datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert classify_failure(view).kind == "permanent"


def test_pod_view_knows_its_node_and_when_its_kubelet_must_have_stopped_it():
    body = {**POD, "metadata": {**POD["metadata"], "deletionTimestamp": "2026-01-01T12:01:00Z"}}
    view = pod_view({**body, "spec": {"nodeName": "gpu-17"}})
    assert view.node == "gpu-17" and view.terminating
    assert view.deletion_deadline == datetime(2026, 1, 1, 12, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("ready", "taints", "unreachable"),
    [
        ("True", [], False),
        ("False", [], False),  # NotReady but reporting (e.g. its network plugin is down): its kubelet still acts
        ("Unknown", [], True),  # the node lifecycle controller heard nothing within the grace period
        ("True", [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}], True),
    ],
)
def test_a_node_is_unreachable_once_its_kubelet_stopped_reporting(ready, taints, unreachable):
    node = {"spec": {"taints": taints}, "status": {"conditions": [{"type": "Ready", "status": ready}]}}
    assert node_unreachable(node) is unreachable


def test_pod_view_of_a_pending_unschedulable_pod():
    body = {
        "metadata": {"name": "p", "labels": {}, "deletionTimestamp": "2026-01-01T00:00:00Z"},
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "message": "no"}]},
    }
    view = pod_view(body)
    assert view.unschedulable == "no" and view.terminating and view.rank == -1


@pytest.mark.parametrize(
    ("view", "kind", "reason"),
    [
        (PodView("p", 0, 0, "Failed", exit_code=1), "retryable", "PodFailed"),
        (PodView("p", 0, 0, "Failed", exit_code=137), "retryable", "PodFailed"),
        (PodView("p", 0, 0, "Failed", exit_code=78), "permanent", "InvalidConfig"),
        (PodView("p", 0, 0, "Failed", exit_code=79), "permanent", "Diverged"),
        (PodView("p", 0, 0, "Failed", exit_code=1, termination_message="Traceback...\nboom"), "retryable", "PodFailed"),
        (PodView("p", 0, 0, "Failed", reason="Evicted"), "disruption", "Evicted"),
        (PodView("p", 0, 0, "Unknown"), "disruption", "NodeLost"),
        (
            PodView("p", 0, 0, "Failed", exit_code=1, termination_message='{"llmtrain": true, "reason": "Diverged"}'),
            "permanent",
            "Diverged",
        ),
        (
            PodView("p", 0, 0, "Failed", exit_code=1, termination_message='{"llmtrain": false, "exitCode": 78}'),
            "retryable",
            "PodFailed",
        ),
    ],
)
def test_failure_classification_follows_the_exit_code_contract(view, kind, reason):
    failure = classify_failure(view)
    assert (failure.kind, failure.reason) == (kind, reason)


METRICS = """\
# HELP llmtrain_step Last completed step.
# TYPE llmtrain_step gauge
llmtrain_step{job="demo",node_rank="0"} 150.0
# TYPE llmtrain_total_steps gauge
llmtrain_total_steps{job="demo",node_rank="0"} 1000.0
# TYPE llmtrain_loss gauge
llmtrain_loss{job="demo",node_rank="0"} 3.25
# TYPE llmtrain_eval_loss gauge
llmtrain_eval_loss{job="demo",node_rank="0"} 3.41237
# TYPE llmtrain_tokens_per_second gauge
llmtrain_tokens_per_second{job="demo",node_rank="0"} 12345.5
# TYPE llmtrain_mfu gauge
llmtrain_mfu{job="demo",node_rank="0"} 0.41
# TYPE llmtrain_last_checkpoint_step gauge
llmtrain_last_checkpoint_step{job="demo",node_rank="0"} 100.0
# TYPE llmtrain_gpu_memory_bytes gauge
llmtrain_gpu_memory_bytes{job="demo",kind="allocated",node_rank="0"} 1e9
# TYPE llmtrain_step_seconds histogram
llmtrain_step_seconds_bucket{job="demo",le="+Inf",node_rank="0"} 150.0
llmtrain_step_seconds_count{job="demo",node_rank="0"} 150.0
llmtrain_step_seconds_sum{job="demo",node_rank="0"} 300.0
"""


def test_progress_is_parsed_from_the_trainer_metric_names():
    p = parse_progress(METRICS)
    assert p is not None
    assert (p.step, p.total_steps, p.loss, p.tokens_per_second, p.mfu) == (150, 1000, 3.25, 12345.5, 0.41)
    assert p.last_checkpoint_step == 100
    assert p.eval_loss == 3.4124  # rounded for kubectl get ltj's Eval column
    assert p.eta == "28m20s"  # 850 steps x 2 s


def test_metrics_without_a_step_give_no_progress():
    assert parse_progress("# TYPE other gauge\nother 1\n") is None


def test_expectations_cover_the_watch_lag_for_creates_and_deletes():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    exp = Expectations()
    exp.created(PodView("demo-node-0", 0, 0, "Pending"), now)
    assert [p.name for p in exp.merge([], now)] == ["demo-node-0"]  # not yet in the index: still counted
    indexed = [PodView("demo-node-0", 0, 0, "Running")]
    assert exp.merge(indexed, now) == indexed  # the index caught up
    exp.deleted("demo-node-0", 0, now)
    assert exp.merge(indexed, now)[0].terminating  # our DELETE is in flight
    assert exp.merge([], now) == []  # gone
    exp.created(PodView("demo-node-1", 1, 0, "Pending"), now)
    late = exp.merge([], now + timedelta(seconds=90))  # an index a loaded API server keeps 90 s behind
    assert [p.name for p in late] == ["demo-node-1"]  # still counted: not POSTed again
    assert exp.merge([], now + timedelta(minutes=6)) == []  # a lost watch event cannot wedge the job


def test_cli_flags_and_env(monkeypatch):
    monkeypatch.setenv("LLMTRAIN_NAMESPACES", "a, b")
    monkeypatch.setenv("LLMTRAIN_METRICS_PORT", "9999")
    args = parse_args([])
    assert args.namespaces == ["a", "b"] and args.metrics_port == 9999 and args.health_port == 8081
    args = parse_args(["--namespace", "x", "--namespace", "y", "--trainer-image", "img:1", "--resync-seconds", "2"])
    assert args.namespaces == ["x", "y"] and args.trainer_image == "img:1" and args.resync_seconds == 2
    monkeypatch.delenv("LLMTRAIN_NAMESPACES")
    assert parse_args([]).namespaces == []  # cluster-wide


def test_leader_election_is_off_by_default_and_needs_the_lease_namespace(monkeypatch):
    monkeypatch.delenv("LLMTRAIN_LEADER_ELECT", raising=False)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    assert parse_args([]).leader_elect is False
    with pytest.raises(SystemExit):
        parse_args(["--leader-elect"])
    monkeypatch.setenv("POD_NAMESPACE", "ops")
    args = parse_args(["--leader-elect"])
    assert (args.leader_elect, args.leader_election_namespace, args.leader_election_name) == (
        True,
        "ops",
        "llmtrain-operator",
    )


def test_rbac_grants_what_the_operator_does():
    assert rbac.allows("llmtrain.dev", "llmtrainingjobs/status", "patch")
    assert rbac.allows("llmtrain.dev", "llmtrainingjobs/finalizers", "update")  # blockOwnerDeletion
    assert rbac.allows("", "pods", "create") and rbac.allows("", "pods", "watch")
    assert rbac.allows("", "events", "create")
    assert rbac.allows("apiextensions.k8s.io", "customresourcedefinitions", "watch")
    assert not rbac.allows("", "secrets", "get")
    assert not rbac.allows("", "pods", "update")
    assert rbac.allows("coordination.k8s.io", "leases", "patch", rbac.LEADER_ELECTION_RULES)
    assert not rbac.allows("coordination.k8s.io", "leases", "patch")  # not in every watched namespace


def test_api_request_metric_names_the_resource():
    from llmtrain_operator.kubeapi import resource_of

    assert resource_of("/api/v1/namespaces/ns/pods/demo-node-0") == "pods"
    assert resource_of("/api/v1/namespaces/ns/events") == "events"
    assert (
        resource_of("/apis/llmtrain.dev/v1alpha1/namespaces/ns/llmtrainingjobs/demo/status") == "llmtrainingjobs/status"
    )
