"""Faults a training job must survive, and the ways users stop one."""

from __future__ import annotations

from kubernetes import client
from llmtrain_testbed.testing import Cluster, wait_for

from .conftest import OPERATOR_NAMESPACE, operator_pods
from .jobs import (
    checkpoint_claim,
    create_job,
    kill_one_worker,
    node_pods,
    patch_job,
    progress,
    resumed_from_step,
    status,
    tiny_job,
    trainer_processes,
    wait_phase,
)

# Long enough to act mid-run on 2 cores, short enough for CI.
STEPS = 120
INTERVAL = 10


def wait_for_checkpoint(cluster: Cluster, ns: str, name: str, at_least: int = INTERVAL) -> int:
    return wait_for(
        lambda: (
            (progress(cluster, ns, name).get("lastCheckpointStep") or 0) >= at_least
            and progress(cluster, ns, name)["lastCheckpointStep"]
        ),
        timeout=300,
        what=f"{name} to report a checkpoint at step >= {at_least}",
    )


def test_a_killed_worker_restarts_the_gang_which_resumes_from_the_checkpoint(
    cluster: Cluster, operator: str, namespace: str
) -> None:
    claim = checkpoint_claim(cluster, namespace)
    create_job(cluster, namespace, tiny_job("fault", steps=STEPS, checkpoint_interval=INTERVAL, claim=claim))
    saved = wait_for_checkpoint(cluster, namespace, "fault")

    kill_one_worker(cluster, namespace, "fault")

    wait_for(lambda: status(cluster, namespace, "fault").get("restarts") == 1, timeout=120, what="a gang restart")
    # The new gang starts from the newest complete checkpoint, not from step 0.
    resumed = wait_for(
        lambda: resumed_from_step(cluster, namespace, "fault"), timeout=240, what="the new gang to load a checkpoint"
    )
    assert resumed >= saved
    final = wait_phase(cluster, namespace, "fault", "Succeeded", timeout=600)
    assert final["restarts"] == 1
    assert final["progress"]["step"] == STEPS


def test_deleting_a_running_job_removes_its_children_and_processes(
    cluster: Cluster, operator: str, namespace: str
) -> None:
    create_job(cluster, namespace, tiny_job("doomed", steps=100_000))
    wait_for(lambda: progress(cluster, namespace, "doomed").get("step"), timeout=300, what="training to start")

    client.CustomObjectsApi(cluster.api_client).delete_namespaced_custom_object(
        "llmtrain.dev", "v1alpha1", namespace, "llmtrainingjobs", "doomed"
    )

    core = client.CoreV1Api(cluster.api_client)
    selector = "llmtrain.dev/job-name=doomed"
    wait_for(
        lambda: not core.list_namespaced_pod(namespace, label_selector=selector).items,
        timeout=120,
        what="the node pods to be garbage-collected",
    )
    wait_for(
        lambda: not core.list_namespaced_service(namespace, field_selector="metadata.name=doomed").items,
        timeout=60,
        what="the Service to be garbage-collected",
    )
    wait_for(
        lambda: not core.list_namespaced_config_map(namespace, field_selector="metadata.name=doomed-config").items,
        timeout=60,
        what="the ConfigMap to be garbage-collected",
    )
    if cluster.is_testbed:
        wait_for(
            lambda: not list(trainer_processes("doomed", workers_only=False)),
            timeout=60,
            what="no trainer process of the job left on the machine",
        )


def test_suspend_removes_the_pods_and_resume_continues_from_the_checkpoint(
    cluster: Cluster, operator: str, namespace: str
) -> None:
    claim = checkpoint_claim(cluster, namespace)
    create_job(cluster, namespace, tiny_job("pausable", steps=STEPS, checkpoint_interval=INTERVAL, claim=claim))
    saved = wait_for_checkpoint(cluster, namespace, "pausable")

    patch_job(cluster, namespace, "pausable", {"spec": {"runPolicy": {"suspend": True}}})
    wait_phase(cluster, namespace, "pausable", "Suspended", timeout=120)
    wait_for(lambda: not node_pods(cluster, namespace, "pausable"), timeout=120, what="the pods to be removed")

    patch_job(cluster, namespace, "pausable", {"spec": {"runPolicy": {"suspend": False}}})
    wait_for(lambda: len(node_pods(cluster, namespace, "pausable")) == 2, timeout=60, what="the pods to return")
    final = wait_phase(cluster, namespace, "pausable", "Succeeded", timeout=600)
    assert final["progress"]["step"] == STEPS
    assert final["restarts"] == 0, "a suspension is not a failure"
    assert resumed_from_step(cluster, namespace, "pausable") >= saved


def test_a_replaced_operator_adopts_the_running_job_without_duplicates(
    cluster: Cluster, operator: str, namespace: str
) -> None:
    create_job(cluster, namespace, tiny_job("adopted", steps=STEPS))
    wait_for(lambda: progress(cluster, namespace, "adopted").get("step"), timeout=300, what="training to start")
    before = {p.metadata.uid for p in node_pods(cluster, namespace, "adopted")}
    [old] = operator_pods(cluster)

    cluster.kubectl("-n", OPERATOR_NAMESPACE, "delete", "pod", old["metadata"]["name"], "--wait=false")
    wait_for(
        lambda: [
            p
            for p in operator_pods(cluster)
            if p["metadata"]["uid"] != old["metadata"]["uid"] and p.get("status", {}).get("phase") == "Running"
        ],
        timeout=120,
        what="a replacement operator pod",
    )

    final = wait_phase(cluster, namespace, "adopted", "Succeeded", timeout=600)
    after = {p.metadata.uid for p in node_pods(cluster, namespace, "adopted")}
    assert after == before, "the new operator must adopt the existing pods, not recreate them"
    assert final["restarts"] == 0


def test_an_evicted_pod_is_a_disruption_resumed_from_the_checkpoint_without_using_the_backoff_limit(
    cluster: Cluster, operator: str, namespace: str
) -> None:
    claim = checkpoint_claim(cluster, namespace)
    job = tiny_job("evicted", steps=STEPS, checkpoint_interval=INTERVAL, claim=claim)
    job["spec"]["runPolicy"] = {**job["spec"].get("runPolicy", {}), "backoffLimit": 0}
    create_job(cluster, namespace, job)
    saved = wait_for_checkpoint(cluster, namespace, "evicted")

    eviction = client.V1Eviction(metadata=client.V1ObjectMeta(name="evicted-node-1", namespace=namespace))
    client.CoreV1Api(cluster.api_client).create_namespaced_pod_eviction("evicted-node-1", namespace, eviction)

    wait_for(lambda: status(cluster, namespace, "evicted").get("disruptions") == 1, timeout=120, what="a disruption")
    resumed = wait_for(
        lambda: resumed_from_step(cluster, namespace, "evicted"), timeout=240, what="the new gang to load a checkpoint"
    )
    assert resumed >= saved
    final = wait_phase(cluster, namespace, "evicted", "Succeeded", timeout=600)
    assert final["disruptions"] == 1 and final["restarts"] == 0
    assert final["progress"]["step"] == STEPS


def test_more_nodes_mid_run_resume_from_the_saved_step_at_the_new_size(
    cluster: Cluster, operator: str, namespace: str
) -> None:
    claim = checkpoint_claim(cluster, namespace)
    job = tiny_job("grown", steps=STEPS, checkpoint_interval=INTERVAL, claim=claim)
    job["spec"]["training"].update(globalBatchSize=12, microBatchSize=1)  # 4 ranks now, 6 after the resize
    create_job(cluster, namespace, job)
    wait_for_checkpoint(cluster, namespace, "grown")

    patch_job(cluster, namespace, "grown", {"spec": {"nodes": 3}})

    wait_for(lambda: len(node_pods(cluster, namespace, "grown")) == 3, timeout=180, what="3 node pods")
    resumed = wait_for(
        lambda: resumed_from_step(cluster, namespace, "grown"), timeout=240, what="the 3-node gang to load a checkpoint"
    )
    assert resumed >= INTERVAL
    final = wait_phase(cluster, namespace, "grown", "Succeeded", timeout=600)
    assert final["nodes"] == 3 and final["restarts"] == 0
    assert final["progress"]["step"] == STEPS
