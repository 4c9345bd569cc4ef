"""The chart's RBAC lets the operator's ServiceAccount do its job and nothing more, checked by the API server.

Each permission the operator declares (operator/llmtrain_operator/rbac.py) is asked of the real authorizer with
`kubectl auth can-i --as=system:serviceaccount:...`, and a few requests are really made with a token of that
ServiceAccount. Secrets stay out of reach.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from llmtrain_operator.rbac import CLUSTER_SCOPED_RESOURCES, RULES
from llmtrain_testbed.testing import wait_for

from .chart_on_cluster import REPO, as_list, find, render, unique

CLUSTER_SCOPED = CLUSTER_SCOPED_RESOURCES
PERMISSIONS = {(g, r, v) for rule in RULES for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
FORBIDDEN = [
    ("", "secrets", "get"),
    ("", "secrets", "list"),
    ("", "secrets", "watch"),
    ("", "pods/exec", "create"),
    ("", "serviceaccounts/token", "create"),
    ("apps", "deployments", "create"),
    ("rbac.authorization.k8s.io", "roles", "create"),
    ("llmtrain.dev", "llmtrainingjobs", "create"),
]


def _can_i(cluster: Any, user: str, group: str, resource: str, verb: str, namespace: str | None) -> bool:
    name, _, subresource = resource.partition("/")
    argv = ["auth", "can-i", verb, f"{name}.{group}" if group else name, f"--as={user}"]
    argv += ["--subresource", subresource] if subresource else []
    argv += ["--namespace", namespace] if namespace else ["--all-namespaces"] if resource in CLUSTER_SCOPED else []
    answer = cluster.kubectl(*argv, check=False)
    assert answer.stdout.strip() in ("yes", "no"), answer.stdout + answer.stderr
    return answer.stdout.strip() == "yes"


def _install_rbac(cluster: Any, namespace: str, cluster_scoped: list[str], *flags: str) -> str:
    """Apply only the chart's ServiceAccount and RBAC objects (no operator runs); return the SA's user name."""
    objects = render(cluster, "rbac", namespace, "--set", f"fullnameOverride={unique('ship-rbac')}", *flags)
    kinds = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
    wanted = [o for o in objects if o["kind"] in kinds]
    cluster.kubectl("apply", "--server-side", "-f", "-", input=as_list(wanted))
    cluster_scoped += [
        f"{o['kind'].lower()}/{o['metadata']['name']}" for o in wanted if o["kind"].startswith("Cluster")
    ]
    (account,) = find(objects, "ServiceAccount")
    return f"system:serviceaccount:{namespace}:{account['metadata']['name']}"


def _token_client(cluster: Any, namespace: str, user: str) -> client.ApiClient:
    """An API client that authenticates with a fresh token of the ServiceAccount, as the operator pod does."""
    account = user.rsplit(":", 1)[1]
    token = cluster.kubectl("create", "token", account, "--namespace", namespace, "--duration=10m").stdout.strip()
    admin = cluster.api_client.configuration
    config = client.Configuration()
    config.host, config.ssl_ca_cert, config.verify_ssl = admin.host, admin.ssl_ca_cert, admin.verify_ssl
    config.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(config)


def _pythonpath() -> dict[str, str]:
    """The operator package importable in a child process, installed or not."""
    paths = [str(REPO / "operator"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {"PYTHONPATH": os.pathsep.join(paths)}


def test_cluster_wide_service_account_may_do_exactly_what_the_operator_declares(
    cluster, llmtrain_crd, namespace, cluster_scoped
):
    user = _install_rbac(cluster, namespace, cluster_scoped)
    for group, resource, verb in sorted(PERMISSIONS):
        for ns in [None] if resource in CLUSTER_SCOPED else [namespace, "default"]:
            assert _can_i(cluster, user, group, resource, verb, ns), f"{user} cannot {verb} {group}/{resource} in {ns}"
    for group, resource, verb in FORBIDDEN:
        assert not _can_i(cluster, user, group, resource, verb, namespace), f"{user} may {verb} {group}/{resource}"


def test_namespaced_service_account_is_confined_to_its_namespaces(cluster, llmtrain_crd, namespace, cluster_scoped):
    user = _install_rbac(cluster, namespace, cluster_scoped, "--set", f"watchNamespaces={{{namespace}}}")
    for group, resource, verb in sorted(p for p in PERMISSIONS if p[1] not in CLUSTER_SCOPED):
        assert _can_i(cluster, user, group, resource, verb, namespace), f"{user} cannot {verb} {resource}"
        assert not _can_i(cluster, user, group, resource, verb, "default"), f"{user} may {verb} {resource} elsewhere"
    for group, resource, verb in sorted(p for p in PERMISSIONS if p[1] in CLUSTER_SCOPED):
        assert _can_i(cluster, user, group, resource, verb, None), f"kopf needs {verb} {resource} cluster-wide"
    for group, resource, verb in FORBIDDEN:
        assert not _can_i(cluster, user, group, resource, verb, namespace)


def test_requests_with_the_service_accounts_token_succeed_and_secrets_are_forbidden(
    cluster, llmtrain_crd, namespace, cluster_scoped
):
    user = _install_rbac(cluster, namespace, cluster_scoped)
    with _token_client(cluster, namespace, user) as api:
        core = client.CoreV1Api(api)
        core.list_namespaced_pod(namespace)
        core.list_namespaced_pod("default")  # cluster-wide: every namespace
        client.CustomObjectsApi(api).list_namespaced_custom_object(
            "llmtrain.dev", "v1alpha1", namespace, "llmtrainingjobs"
        )
        client.ApiextensionsV1Api(api).list_custom_resource_definition(limit=1)
        probe = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="rbac-probe"), data={"k": "v"})
        core.create_namespaced_config_map(namespace, probe)
        core.delete_namespaced_config_map("rbac-probe", namespace)
        with pytest.raises(ApiException) as denied:
            core.list_namespaced_secret(namespace)
        assert denied.value.status == 403
        with pytest.raises(ApiException) as denied:
            core.read_namespaced_secret("anything", namespace)
        assert denied.value.status == 403


def test_operator_authenticated_as_the_namespaced_service_account_reconciles_a_job(
    cluster, llmtrain_crd, namespace, cluster_scoped, tmp_path
):
    """The real operator, given only a token of the chart's ServiceAccount, writes children, events and status."""
    user = _install_rbac(cluster, namespace, cluster_scoped, "--set", f"watchNamespaces={{{namespace}}}")
    token = cluster.kubectl("create", "token", user.rsplit(":", 1)[1], "--namespace", namespace).stdout.strip()
    admin = cluster.api_client.configuration
    kubeconfig = tmp_path / "service-account.kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "c", "cluster": {"server": admin.host, "certificate-authority": admin.ssl_ca_cert}}
                ],
                "users": [{"name": "operator", "user": {"token": token}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "operator", "namespace": namespace}}],
                "current-context": "c",
            }
        )
    )
    log_path = tmp_path / "operator.log"
    argv = [
        sys.executable,
        "-m",
        "llmtrain_operator",
        f"--namespace={namespace}",
        "--metrics-port=0",
        "--health-port=0",
        "--resync-seconds=2",
        "--status-interval-seconds=2",
    ]
    with log_path.open("w") as log:
        operator = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(kubeconfig), **_pythonpath()},
        )
    try:
        job = yaml.safe_load((REPO / "examples" / "tiny-cpu.yaml").read_text())
        job["metadata"]["name"] = "held"
        job["spec"]["runPolicy"]["suspend"] = True  # reconciled (ConfigMap, Service, status) without training
        cluster.kubectl("apply", "--namespace", namespace, "-f", "-", input=yaml.safe_dump(job))
        jobs = client.CustomObjectsApi(cluster.api_client)

        def phase() -> str | None:
            got = jobs.get_namespaced_custom_object("llmtrain.dev", "v1alpha1", namespace, "llmtrainingjobs", "held")
            return (got.get("status") or {}).get("phase")

        try:
            wait_for(lambda: phase() == "Suspended", timeout=60, what="the job to be Suspended")
        except AssertionError as timeout:
            raise AssertionError(f"{timeout}\noperator log:\n{log_path.read_text()[-3000:]}") from None
        core = client.CoreV1Api(cluster.api_client)
        assert core.read_namespaced_config_map("held-config", namespace).data
        assert core.read_namespaced_service("held", namespace).spec.cluster_ip == "None"
        assert "Forbidden" not in log_path.read_text(), log_path.read_text()[-3000:]
    finally:
        operator.terminate()
        try:
            operator.wait(timeout=15)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait(timeout=5)
