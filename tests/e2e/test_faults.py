"""Faults a training job must survive, and the ways users stop one."""

from __future__ import annotations

import json
import time

from kubernetes import client
from llmtrain_testbed.testing import Cluster, wait_for

from .conftest import OPERATOR_NAMESPACE, RELEASE, operator_pods
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


def test_a_deleted_leader_is_replaced_by_the_standby_which_adopts_the_running_job_without_duplicates(
    cluster: Cluster, operator: str, namespace: str
) -> None:
    create_job(cluster, namespace, tiny_job("adopted", steps=STEPS))
    wait_for(lambda: progress(cluster, namespace, "adopted").get("step"), timeout=300, what="training to start")
    before = {p.metadata.uid for p in node_pods(cluster, namespace, "adopted")}
    old = leader_pod_name(cluster)
    assert len(operator_pods(cluster)) == 2  # the chart's default: a leader and a standby

    cluster.kubectl("-n", OPERATOR_NAMESPACE, "delete", "pod", old, "--wait=false")  # SIGTERM: it releases the Lease
    started = time.monotonic()
    new = wait_for(
        lambda: (holder := leader_pod_name(cluster)) not in (old, "") and holder,
        timeout=60,
        what="the standby to take the Lease over",
    )
    assert time.monotonic() - started < 20, "released on SIGTERM (else 10 s to expire); a standby tries every 2 s"
    assert new != old

    final = wait_phase(cluster, namespace, "adopted", "Succeeded", timeout=600)
    after = {p.metadata.uid for p in node_pods(cluster, namespace, "adopted")}
    assert after == before, "the new leader must adopt the existing pods, not recreate them"
    assert final["restarts"] == 0


def leader_pod_name(cluster: Cluster) -> str:
    """The operator pod holding the Lease (holderIdentity `<pod name>_<random suffix>`), "" when released."""
    out = cluster.kubectl("-n", OPERATOR_NAMESPACE, "get", "lease", f"{RELEASE}-llmtrain-operator", "-o", "json").stdout
    holder = json.loads(out)["spec"].get("holderIdentity") or ""
    return holder.rsplit("_", 1)[0]


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
