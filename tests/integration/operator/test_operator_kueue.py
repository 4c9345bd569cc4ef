"""Kueue built from source (sigs.k8s.io/kueue v0.17.0): the whole gang is admitted or none of it, within quota;
a preempted job goes back to the queue and resumes later; examples/with-kueue.yaml works as its comments say.

The test bed's ClusterQueue (llmtrain_testbed.kueue) holds 8 GPUs; each test makes its own LocalQueue.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from llmtrain_testbed.testing import Cluster, wait_for

from .kube import Kube, OperatorProcess, job_manifest, running_operator

REPO = Path(__file__).resolve().parents[3]
GPUS_3 = {"requests": {"cpu": "10m", "memory": "32Mi", "nvidia.com/gpu": 3}, "limits": {"nvidia.com/gpu": 3}}
PRIORITIES = {"llmtrain-test-low": 10, "llmtrain-test-high": 1000}


@pytest.fixture(scope="module")
def kueue(cluster: Cluster, crd: None) -> None:
    if not cluster.is_testbed:
        pytest.skip("installs Kueue into the test bed; on another cluster install Kueue yourself")
    from llmtrain_testbed import kueue as testbed_kueue

    testbed_kueue.up()
    for name, value in PRIORITIES.items():
        priority_class = {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name}}
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump({**priority_class, "value": value}))


@pytest.fixture
def kube(cluster: Cluster, namespace: str, kueue: None) -> Kube:
    from llmtrain_testbed.kueue import local_queue

    kube = Kube(cluster, namespace)
    kube.apply(local_queue(namespace, "team"))
    return kube


@pytest.fixture
def operator(cluster: Cluster, namespace: str, kueue: None) -> Iterator[OperatorProcess]:
    with running_operator(cluster, namespace) as op:
        yield op


def queued_job(name: str, snippet: str, priority: str | None = None, **spec) -> dict:
    scheduling = {"queueName": "team", **({"priorityClassName": priority} if priority else {})}
    return job_manifest(name, snippet, nodes=2, resources=GPUS_3, scheduling=scheduling, **spec)


def bound(kube: Kube, job: str) -> int:
    return sum(
        1 for pod in kube.pods(job) if pod["spec"].get("nodeName") and not pod["metadata"].get("deletionTimestamp")
    )


def queued(kube: Kube, job: str) -> dict | None:
    condition = {c["type"]: c for c in kube.status(job).get("conditions", [])}.get("Queued")
    return condition if condition and condition["status"] == "True" else None


def test_quota_admits_one_whole_gang_and_the_other_waits_with_no_pod_bound(kube: Kube, operator: OperatorProcess):
    kube.create(queued_job("one", "time.sleep(8)"))
    kube.wait_phase("one", "Running", timeout=90)
    kube.create(queued_job("two", "time.sleep(1)"))  # 2 x 3 GPUs more would exceed the queue's 8
    condition = wait_for(lambda: queued(kube, "two"), timeout=60, what="job two Queued")
    assert condition["reason"] == "QueuedByKueue", condition
    assert kube.status("two")["phase"] == "Pending" and kube.status("two")["gang"] == "kueue"
    assert bound(kube, "two") == 0 and all(p["spec"].get("schedulingGates") for p in kube.pods("two"))
    kube.wait_phase("one", "Succeeded", timeout=90)
    kube.wait_phase("two", "Succeeded", timeout=120)


def test_a_preempted_job_goes_back_to_the_queue_and_resumes_without_using_its_backoff(
    kube: Kube, operator: OperatorProcess
):
    # attempt 0 runs until preempted; the next attempt (after the high-priority job) finishes at once
    low = queued_job("low", "time.sleep(3600 if a == 0 else 1)", "llmtrain-test-low", runPolicy={"backoffLimit": 0})
    kube.create(low)
    kube.wait_phase("low", "Running", timeout=90)
    kube.create(queued_job("high", "time.sleep(5)", "llmtrain-test-high"))
    wait_for(lambda: kube.status("low").get("disruptions") == 1, timeout=90, what="low preempted (a disruption)")
    wait_for(lambda: queued(kube, "low"), timeout=60, what="low queued again")
    assert bound(kube, "low") == 0
    kube.wait_phase("high", "Succeeded", timeout=120)
    status = kube.wait_phase("low", "Succeeded", timeout=180)
    assert status["restarts"] == 0 and status["disruptions"] == 1 and status["attempt"] == 1


def test_the_kueue_example_runs_as_its_comments_say(cluster: Cluster, kube: Kube, operator: OperatorProcess):
    docs = [d for d in yaml.safe_load_all((REPO / "examples" / "with-kueue.yaml").read_text()) if d]
    job = next(d for d in docs if d["kind"] == "LLMTrainingJob")
    queue_name = job["spec"]["scheduling"]["queueName"]
    from llmtrain_testbed.kueue import local_queue

    kube.apply(local_queue(kube.ns, queue_name))
    job = {**job, "metadata": {**job["metadata"], "namespace": kube.ns}}
    job["metadata"]["annotations"] = {"llmtrain.dev/dev-command": '["python", "-c", "import time; time.sleep(1)"]'}
    job["spec"].update(resources=GPUS_3, procsPerNode=1)  # the test bed's GPUs are few; the rest as written
    kube.create(job)
    status = kube.wait_phase(job["metadata"]["name"], "Succeeded", timeout=120)
    assert status["gang"] == "kueue"
