"""Bad input gets a clear error naming the field and creates nothing: the API server rejects what the schema can
express; the operator marks the rest Failed/InvalidSpec with a Warning event and no pods."""

from __future__ import annotations

import copy

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from llmtrain_testbed.testing import Cluster, wait_for

from .jobs import create_job, node_pods, status, tiny_job


def _with(path: str, value: object) -> dict:
    job = tiny_job("bad")
    *parents, leaf = path.split(".")
    node = job["spec"]
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return job


REJECTED_BY_THE_API_SERVER = [
    ("training.steps", "ten", "spec.training.steps"),
    ("training.steps", -5, "spec.training.steps"),
    ("model.preset", "gpt5", "spec.model.preset"),
    ("parallelism.tensorParallel", 3, "tensorParallel"),  # does not divide procsPerNode=2
    ("precision", "fp8", "spec.precision"),
]


@pytest.mark.parametrize(("path", "value", "named"), REJECTED_BY_THE_API_SERVER)
def test_invalid_spec_is_rejected_by_the_api_server_naming_the_field(
    cluster: Cluster, operator: str, namespace: str, path: str, value: object, named: str
) -> None:
    with pytest.raises(ApiException) as rejected:
        create_job(cluster, namespace, _with(path, value))
    assert rejected.value.status == 422
    assert named in rejected.value.body


def test_heads_not_divisible_by_tensor_parallel_fails_as_invalid_spec_without_pods(
    cluster: Cluster, operator: str, namespace: str
) -> None:
    job = tiny_job("heads")
    job["spec"]["model"] = {"dim": 96, "layers": 2, "heads": 3, "kvHeads": 3, "vocabSize": 256}
    job["spec"]["parallelism"]["tensorParallel"] = 2
    create_job(cluster, namespace, copy.deepcopy(job))

    def failed_status() -> dict | None:
        st = status(cluster, namespace, "heads")
        return st if st.get("phase") == "Failed" else None

    st = wait_for(failed_status, timeout=60, what="the job to be marked Failed")
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert "heads" in failed["message"]
    events = client.CoreV1Api(cluster.api_client).list_namespaced_event(
        namespace, field_selector="involvedObject.name=heads"
    )
    assert any(e.type == "Warning" and e.reason == "InvalidSpec" and "heads" in e.message for e in events.items)
    assert node_pods(cluster, namespace, "heads") == []
