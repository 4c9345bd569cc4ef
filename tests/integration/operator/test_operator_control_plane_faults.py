"""A job outlives what real clusters do mid-job: the API server restarted (an upgrade, a crash); the operator's
credentials revoked and replaced (a rotated token behind an exec-plugin kubeconfig, as EKS, GKE and OIDC helpers
hand out); a node lost (its kubelet silent, as a powered-off machine). Each job succeeds and its status converges."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from llmtrain_operator.rbac import RULES
from llmtrain_testbed import cluster as testbed
from llmtrain_testbed.testing import Cluster, wait_for

from .kube import Kube, OperatorProcess, job_manifest, running_operator

RUN_A_WHILE = "time.sleep(20)"  # long enough for the fault to land while both node pods run
EXEC_PLUGIN = """\
import json, sys
token = open(sys.argv[1]).read().strip()
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {"token": token}}))
"""


def both_running(kube: Kube, name: str) -> list[dict]:
    pods = wait_for(
        lambda: len(p := [x for x in kube.pods(name) if x["status"].get("phase") == "Running"]) == 2 and p,
        timeout=60,
        what=f"both node pods of {name} running",
    )
    return pods


def assert_converged(kube: Kube, name: str, pods_before: list[dict]) -> None:
    """Succeeded with the pods it started (no restart, no replacement pods), nothing active, Running ended."""
    status = kube.wait_phase(name, "Succeeded", timeout=120)
    assert status["restarts"] == 0 and status.get("active", 0) == 0
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Succeeded"]["status"] == "True" and conditions["Running"]["status"] == "False"
    uids = lambda pods: sorted(p["metadata"]["uid"] for p in pods)  # noqa: E731
    assert uids(kube.pods(name)) == uids(pods_before)


def test_a_job_outlives_an_api_server_restart_and_its_status_converges(
    cluster: Cluster, kube: Kube, operator: OperatorProcess
):
    if not cluster.is_testbed:
        pytest.skip("restarts the test bed's own API server")
    kube.create(job_manifest("through-restart", RUN_A_WHILE, runPolicy={"backoffLimit": 0}))
    pods = both_running(kube, "through-restart")

    down_s = testbed.restart("kube-apiserver")

    print(f"API server down and back in {down_s:.1f}s")
    assert_converged(kube, "through-restart", pods)


@pytest.fixture
def service_account(cluster: Cluster, namespace: str) -> Iterator[str]:
    """A ServiceAccount allowed what the operator declares (rbac.RULES), cluster-wide for this test."""
    name = f"op-{namespace}"[:63]
    core, rbac = client.CoreV1Api(cluster.api_client), client.RbacAuthorizationV1Api(cluster.api_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "operator"}})
    rbac.create_cluster_role({"metadata": {"name": name}, "rules": RULES})
    subject = {"kind": "ServiceAccount", "name": "operator", "namespace": namespace}
    role_ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name}
    rbac.create_cluster_role_binding({"metadata": {"name": name}, "roleRef": role_ref, "subjects": [subject]})
    try:
        yield "operator"
    finally:
        rbac.delete_cluster_role_binding(name)
        rbac.delete_cluster_role(name)


def bound_token(cluster: Cluster, namespace: str, account: str, secret: str) -> str:
    """A token of `account` bound to a Secret: deleting the Secret revokes it, as the API server checks."""
    body = {"metadata": {"name": secret}, "stringData": {"purpose": "binds an operator token"}}
    client.CoreV1Api(cluster.api_client).create_namespaced_secret(namespace, body)
    argv = ["create", "token", account, "-n", namespace, "--bound-object-kind=Secret"]
    return cluster.kubectl(*argv, f"--bound-object-name={secret}", "--duration=10m").stdout.strip()


def exec_plugin_kubeconfig(cluster: Cluster, directory: Path, token_file: Path) -> Path:
    """The test bed's server and CA, with a user whose token comes from an exec plugin reading `token_file`."""
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    (plugin := directory / "token_plugin.py").write_text(EXEC_PLUGIN)
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(plugin), str(token_file)],
            "interactiveMode": "Never",
        }
    }
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testbed", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": "operator", "user": user}],
        "contexts": [{"name": "operator", "context": {"cluster": "testbed", "user": "operator"}}],
        "current-context": "operator",
    }
    (path := directory / "kubeconfig").write_text(yaml.safe_dump(config))
    return path


def refused(cluster: Cluster, token: str) -> bool:
    config = client.Configuration()
    admin = cluster.api_client.configuration
    config.host, config.ssl_ca_cert, config.verify_ssl = admin.host, admin.ssl_ca_cert, admin.verify_ssl
    config.api_key = {"authorization": f"Bearer {token}"}
    try:
        client.CoreV1Api(client.ApiClient(config)).list_namespaced_pod("default", limit=1)
    except ApiException as error:
        return error.status == 401
    return False


def test_a_job_outlives_its_operators_token_being_revoked_and_rotated(
    cluster: Cluster, kube: Kube, namespace: str, crd: None, service_account: str, tmp_path: Path
):
    token_file = tmp_path / "token"
    token_file.write_text(bound_token(cluster, namespace, service_account, "token-a"))
    kubeconfig = exec_plugin_kubeconfig(cluster, tmp_path, token_file)
    with running_operator(cluster, namespace, kubeconfig=str(kubeconfig)) as op:
        kube.create(job_manifest("through-rotation", RUN_A_WHILE, runPolicy={"backoffLimit": 0}))
        pods = both_running(kube, "through-rotation")
        revoked = token_file.read_text()

        token_file.write_text(bound_token(cluster, namespace, service_account, "token-b"))  # the helper's next
        client.CoreV1Api(cluster.api_client).delete_namespaced_secret("token-a", namespace)

        wait_for(lambda: refused(cluster, revoked), timeout=30, what="the first token to be refused")
        assert_converged(kube, "through-rotation", pods)
        assert "refused our credentials (401); logged in again" in op.logs()


def node_ready(cluster: Cluster, name: str) -> bool:
    node = client.CoreV1Api(cluster.api_client).read_node(name)
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def test_a_lost_node_restarts_the_gang_on_the_remaining_nodes_and_the_job_succeeds(
    cluster: Cluster, kube: Kube, operator: OperatorProcess
):
    if not cluster.is_testbed:
        pytest.skip("silences one of the test bed's nodes")
    # The first attempt runs until its node is lost; the next one finishes. The job's own toleration of an unreachable
    # node (5 s) replaces the operator's 60 s default, so the test waits mostly for the node lifecycle controller.
    tolerate = {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}
    scheduling = {"tolerations": [{**tolerate, "tolerationSeconds": 5}]}
    snippet = "time.sleep(3600 if a == 0 else 3)"
    kube.create(job_manifest("lost-node", snippet, runPolicy={"backoffLimit": 0}, scheduling=scheduling))
    pods = both_running(kube, "lost-node")
    lost = next(p["spec"]["nodeName"] for p in pods if p["metadata"]["labels"]["llmtrain.dev/node-rank"] == "1")

    began = time.monotonic()
    testbed.lose_node(lost)
    try:
        status = kube.wait_phase("lost-node", "Succeeded", timeout=360)
        recovered_s = time.monotonic() - began
    finally:
        testbed.restore_node(lost)
        wait_for(lambda: node_ready(cluster, lost), timeout=90, what=f"node {lost} Ready again")

    print(f"node {lost} lost: the job restarted elsewhere and succeeded {recovered_s:.0f}s later")
    assert status["disruptions"] == 1 and status["restarts"] == 0  # not counted against backoffLimit
    assert all(p["spec"]["nodeName"] != lost for p in kube.pods("lost-node"))
    reasons = {(e["type"], e["reason"]) for e in kube.events("lost-node")}
    assert ("Warning", "NodeLost") in reasons and ("Normal", "Disrupted") in reasons
