"""The test bed's control plane is real Kubernetes: version, RBAC, garbage collection, helm and kubeconform.

Pod behaviour (scheduling, DNS, logs, exit codes) is covered by the kubelet's own tests.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from llmtrain_testbed import paths, schemas
from llmtrain_testbed.testing import Cluster, wait_for


def _token_client(cluster: Cluster, namespace: str, service_account: str) -> client.ApiClient:
    """An API client that authenticates only with a TokenRequest token of `service_account`, as a pod would."""
    core = client.CoreV1Api(cluster.api_client)
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata={"name": service_account}))
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600))
    token = core.create_namespaced_service_account_token(service_account, namespace, request).status.token
    config = copy.deepcopy(cluster.api_client.configuration)
    config.cert_file = config.key_file = None
    config.refresh_api_key_hook = None
    config.api_key = {"authorization": f"Bearer {token}"}
    config.api_key_prefix = {}
    return client.ApiClient(config)


def _status_of(call: object) -> int:
    try:
        call()  # type: ignore[operator]
    except ApiException as error:
        return error.status
    return 200


def test_apiserver_and_kubectl_report_the_pinned_version(cluster: Cluster) -> None:
    if not cluster.is_testbed:
        pytest.skip("the pinned version is a property of the test bed, not of an external cluster")
    assert client.VersionApi(cluster.api_client).get_code().git_version == paths.K8S_VERSION
    versions = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert versions["clientVersion"]["gitVersion"] == paths.K8S_VERSION
    assert versions["serverVersion"]["gitVersion"] == paths.K8S_VERSION


def test_service_account_token_without_a_role_is_authenticated_but_forbidden_to_list_pods(
    cluster: Cluster, namespace: str
) -> None:
    with _token_client(cluster, namespace, "nobody") as as_sa:
        review = client.AuthenticationV1Api(as_sa).create_self_subject_review(client.V1SelfSubjectReview())
        assert review.status.user_info.username == f"system:serviceaccount:{namespace}:nobody"
        assert _status_of(lambda: client.CoreV1Api(as_sa).list_namespaced_pod(namespace)) == 403


def test_service_account_token_with_a_role_can_list_pods_and_nothing_more(cluster: Cluster, namespace: str) -> None:
    rbac = client.RbacAuthorizationV1Api(cluster.api_client)
    rule = client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get", "list"])
    rbac.create_namespaced_role(namespace, client.V1Role(metadata={"name": "pod-reader"}, rules=[rule]))
    with _token_client(cluster, namespace, "reader") as as_sa:
        subject = client.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=namespace)
        binding = client.V1RoleBinding(
            metadata={"name": "reader-reads-pods"},
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="pod-reader"),
            subjects=[subject],
        )
        rbac.create_namespaced_role_binding(namespace, binding)
        core = client.CoreV1Api(as_sa)
        wait_for(
            lambda: _status_of(lambda: core.list_namespaced_pod(namespace)) == 200,
            timeout=30,
            what="the RoleBinding to let the ServiceAccount list pods",
        )
        assert _status_of(lambda: core.list_namespaced_secret(namespace)) == 403
        assert _status_of(lambda: core.list_namespaced_pod("default")) == 403


def test_deleting_an_owner_garbage_collects_its_dependent_and_nothing_else(cluster: Cluster, namespace: str) -> None:
    core = client.CoreV1Api(cluster.api_client)
    owner = core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata={"name": "owner"}))
    reference = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    dependent = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="dependent", owner_references=[reference]))
    core.create_namespaced_config_map(namespace, dependent)
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata={"name": "bystander"}))

    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    wait_for(
        lambda: _status_of(lambda: core.read_namespaced_config_map("dependent", namespace)) == 404,
        timeout=60,
        what="the garbage collector to delete the owned ConfigMap",
    )
    assert core.read_namespaced_config_map("bystander", namespace).metadata.name == "bystander"


def _trivial_chart(directory: Path) -> Path:
    chart = directory / "greeting"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: greeting\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("message: hello\n")
    (chart / "templates" / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-greeting\n"
        "data:\n  message: {{ .Values.message | quote }}\n"
    )
    return chart


def test_helm_template_renders_a_chart_with_the_given_values(cluster: Cluster, tmp_path: Path) -> None:
    chart = _trivial_chart(tmp_path)
    rendered = cluster.helm("template", "demo", str(chart), "--set", "message=hi there").stdout
    assert "name: demo-greeting" in rendered
    assert 'message: "hi there"' in rendered


def test_helm_install_creates_the_charts_objects_and_uninstall_removes_them(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    chart = _trivial_chart(tmp_path)
    core = client.CoreV1Api(cluster.api_client)

    cluster.helm("install", "demo", str(chart), "--namespace", namespace, "--wait", "--timeout", "60s")

    assert core.read_namespaced_config_map("demo-greeting", namespace).data == {"message": "hello"}
    releases = json.loads(cluster.helm("list", "--namespace", namespace, "-o", "json").stdout)
    assert [(r["name"], r["status"]) for r in releases] == [("demo", "deployed")]
    cluster.helm("uninstall", "demo", "--namespace", namespace, "--wait")
    assert _status_of(lambda: core.read_namespaced_config_map("demo-greeting", namespace)) == 404


GOOD_DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web
          image: example/web:1
          command: [python, -m, http.server]
          ports: [{containerPort: 8000}]
          resources: {limits: {cpu: 1, memory: 64Mi}}
"""


@pytest.fixture(scope="module")
def schema_location(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    """kubeconform schemas converted from this cluster's own OpenAPI document (no internet needed)."""
    openapi = json.loads(cluster.kubectl("get", "--raw", "/openapi/v2", timeout=120).stdout)
    return schemas.write(openapi, tmp_path_factory.mktemp("kubeconform"))


def _kubeconform(schema_location: str, manifest: str) -> list[dict[str, str]]:
    argv = [str(paths.binary("kubeconform")), "-strict", "-verbose", "-output", "json"]
    result = subprocess.run(
        [*argv, "-schema-location", schema_location, "-"],
        input=manifest,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return json.loads(result.stdout)["resources"]


def test_kubeconform_accepts_a_valid_manifest(schema_location: str) -> None:
    resources = _kubeconform(schema_location, GOOD_DEPLOYMENT)
    assert [(r["kind"], r["status"]) for r in resources] == [("Deployment", "statusValid")]


@pytest.mark.parametrize(
    ("mistake", "broken"),
    [
        ("a misspelt field", GOOD_DEPLOYMENT.replace("containers:", "contaners:")),
        ("a string where an integer belongs", GOOD_DEPLOYMENT.replace("replicas: 1", "replicas: one")),
    ],
)
def test_kubeconform_rejects_a_broken_manifest(schema_location: str, mistake: str, broken: str) -> None:
    resources = _kubeconform(schema_location, broken)
    assert [(r["kind"], r["status"]) for r in resources] == [("Deployment", "statusInvalid")], mistake
