"""`helm install` of the chart on a real cluster: the operator starts as its ServiceAccount in a namespace that
enforces the "restricted" profile, answers /healthz and /metrics, and reconciles a job; bad values are refused.

The release watches only its own namespace, so it cannot interfere with other tests' operators.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client
from llmtrain_testbed.testing import fresh_namespace, wait_for

from .chart_on_cluster import CHART, REPO, RESTRICTED_LABEL, unique

INSTALL_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def release(cluster: Any, llmtrain_crd: str) -> Iterator[tuple[str, str]]:
    """(release, namespace) of an installed chart; uninstalled afterwards."""
    with fresh_namespace(cluster, "ship-helm-install") as namespace:
        cluster.kubectl("label", "namespace", namespace, RESTRICTED_LABEL, "--overwrite")
        name = unique("llmtrain")
        cluster.helm(
            "install",
            name,
            str(CHART),
            "--namespace",
            namespace,
            "--skip-crds",
            "--set",
            f"watchNamespaces={{{namespace}}}",
            "--set",
            "resyncSeconds=2",
            "--set",
            "statusIntervalSeconds=2",
            "--wait",
            "--timeout",
            f"{INSTALL_TIMEOUT_S}s",
            timeout=INSTALL_TIMEOUT_S + 30,
        )
        try:
            yield name, namespace
        finally:
            cluster.helm("uninstall", name, "--namespace", namespace, "--wait", "--timeout", "60s", check=False)


def _operator_pods(cluster: Any, release: str, namespace: str) -> list[client.V1Pod]:
    """The release's running operator pods: the chart's default is two replicas, one leading."""
    pods = (
        client.CoreV1Api(cluster.api_client)
        .list_namespaced_pod(namespace, label_selector=f"app.kubernetes.io/instance={release}")
        .items
    )
    running = [p for p in pods if p.status.phase == "Running" and p.metadata.deletion_timestamp is None]
    assert len(running) == 2, [(p.metadata.name, p.status.phase) for p in pods]
    return running


def _leader_pod(cluster: Any, release: str, namespace: str) -> client.V1Pod:
    """The replica holding the release's Lease (its holderIdentity is `<pod name>_<random suffix>`)."""
    lease = client.CoordinationV1Api(cluster.api_client).read_namespaced_lease(
        f"{release}-llmtrain-operator", namespace
    )
    holder = (lease.spec.holder_identity or "").rsplit("_", 1)[0]
    (leader,) = [p for p in _operator_pods(cluster, release, namespace) if p.metadata.name == holder]
    return leader


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()


def test_installed_operator_runs_as_the_charts_service_account(cluster, release):
    name, namespace = release
    for pod in _operator_pods(cluster, name, namespace):
        assert pod.spec.service_account_name == f"{name}-llmtrain-operator"
        (container,) = pod.spec.containers
        assert container.command == ["llmtrain-operator"]
        assert f"--namespace={namespace}" in container.args and "--leader-elect" in container.args
        assert all(s.ready for s in pod.status.container_statuses)


def test_one_replica_leads_through_a_lease_and_the_other_stands_by(cluster, release):
    name, namespace = release
    leader = wait_for(lambda: _leader_pod(cluster, name, namespace), timeout=60, what="a leader", ignoring=(Exception,))
    if not cluster.is_testbed:
        return
    for pod in _operator_pods(cluster, name, namespace):
        leading = pod.metadata.name == leader.metadata.name
        gauge = f"llmtrain_operator_leader {1.0 if leading else 0.0}"
        url = f"http://{pod.status.pod_ip}:8080/metrics"  # served a moment after the pod turns Running
        wait_for(lambda url=url, gauge=gauge: gauge in _get(url)[1], timeout=60, what=gauge, ignoring=(OSError,))


def test_installed_operator_answers_healthz_and_metrics(cluster, release):
    if not cluster.is_testbed:
        pytest.skip("pod IPs are reachable from the host only on the test bed")
    for pod in _operator_pods(cluster, *release):  # the standby is alive too
        status, _ = wait_for(
            lambda pod=pod: _get(f"http://{pod.status.pod_ip}:8081/healthz"),
            timeout=60,
            what="the operator's /healthz",
            ignoring=(OSError,),
        )
        assert status == 200
        status, body = _get(f"http://{pod.status.pod_ip}:8080/metrics")
        assert status == 200 and "llmtrain_operator_" in body


def test_helm_test_reaches_healthz_through_the_service(cluster, release):
    name, namespace = release
    result = cluster.helm("test", name, "--namespace", namespace, "--timeout", "120s", "--logs", timeout=150)
    assert "Phase:          Succeeded" in result.stdout, result.stdout
    assert "/healthz: HTTP 200" in result.stdout, result.stdout


def test_installed_operator_reconciles_a_job_in_its_namespace(cluster, release):
    name, namespace = release
    job = yaml.safe_load((REPO / "examples" / "tiny-cpu.yaml").read_text())
    job["metadata"]["name"] = "held"
    job["spec"]["runPolicy"]["suspend"] = True  # reconciled without running any training
    cluster.kubectl("apply", "--namespace", namespace, "-f", "-", input=yaml.safe_dump(job))
    objects = client.CustomObjectsApi(cluster.api_client)

    def phase() -> str | None:
        got = objects.get_namespaced_custom_object("llmtrain.dev", "v1alpha1", namespace, "llmtrainingjobs", "held")
        return (got.get("status") or {}).get("phase")

    try:
        wait_for(lambda: phase() == "Suspended", timeout=90, what="the job to be Suspended")
    except AssertionError as timeout:
        logs = cluster.kubectl(
            "logs", "--namespace", namespace, f"deployment/{name}-llmtrain-operator", "--tail=15", check=False
        )
        raise AssertionError(f"{timeout}\noperator log tail:\n{logs.stdout}{logs.stderr}") from None
    if cluster.is_testbed:
        pod = _leader_pod(cluster, name, namespace)
        _, metrics = _get(f"http://{pod.status.pod_ip}:8080/metrics")
        assert 'llmtrain_operator_jobs{phase="Suspended"} 1.0' in metrics, "this release's leader saw the job"


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--set", "replicaCount=2"], "replicaCount"),
        (["--set", "watchNamespaces={Team_A}"], "watchNamespaces"),
        (["--set", "securityContext.runAsNonroot=true"], "runAsNonroot"),
    ],
    ids=["unknown-key", "invalid-namespace-name", "misspelt-security-field"],
)
def test_helm_install_rejects_values_that_break_the_schema_naming_the_value(
    cluster, llmtrain_crd, namespace, flags, named
):
    name = unique("bad")
    result = cluster.helm("install", name, str(CHART), "--namespace", namespace, "--skip-crds", *flags, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert named in result.stderr, result.stderr
    assert cluster.helm("status", name, "--namespace", namespace, check=False).returncode != 0, "nothing installed"
