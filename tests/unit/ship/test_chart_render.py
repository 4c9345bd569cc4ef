"""The Helm chart renders valid, least-privilege, restricted-profile objects for default and non-default values.

helm and kubeconform are the real binaries from `make cluster-bins`; kubeconform validates against the Kubernetes
schemas of the test bed's version and against the LLMTrainingJob CRD the chart ships.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from llmtrain_operator.rbac import CLUSTER_SCOPED_RESOURCES, LEADER_ELECTION_RULES, RULES

from .chart_tools import (
    CHART,
    CRD_NAME,
    RELEASE_NAMESPACE,
    REPO,
    binary,
    find,
    helm_template,
    kube_version,
    kubeconform,
    render,
    run,
    swagger_path,
    write_crd_schema,
    write_kubernetes_schemas,
)

# helm, kubeconform, shellcheck or actionlint: built or installed by `make cluster-bins system-deps`
pytestmark = pytest.mark.tools

BUILTIN_KINDS = {
    "ClusterRole",
    "ClusterRoleBinding",
    "ConfigMap",
    "CustomResourceDefinition",
    "Deployment",
    "Job",
    "PersistentVolumeClaim",
    "Pod",
    "Role",
    "RoleBinding",
    "Service",
    "ServiceAccount",
}
# Everything a non-default install can switch on, so every template renders.
FULL_VALUES: dict[str, Any] = {
    "image": {"repository": "registry.example.com/llmtrain/operator", "tag": "1.2.3", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "registry-creds"}],
    "watchNamespaces": ["team-a", "team-b"],
    "trainerImage": {"repository": "registry.example.com/llmtrain/trainer", "tag": "1.2.3-cuda"},
    "resyncSeconds": 30,
    "statusIntervalSeconds": 20,
    "extraArgs": ["--verbose"],
    "extraEnv": [{"name": "KOPF_LOG", "value": "debug"}],
    "metrics": {"port": 9100, "service": {"type": "ClusterIP", "annotations": {"a": "b"}}},
    "health": {"port": 9101},
    "serviceAccount": {"create": True, "name": "trainer-operator", "annotations": {"iam": "role"}},
    "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "kube-prometheus-stack"}},
    "podMonitor": {"enabled": True, "interval": "10s", "labels": {"release": "kube-prometheus-stack"}},
    "grafanaDashboard": {"enabled": True, "namespace": "monitoring"},
    "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"cpu": 1, "memory": "1Gi"}},
    "podAnnotations": {"example.com/team": "ml"},
    "podLabels": {"team": "ml"},
    "priorityClassName": "system-cluster-critical",
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["system"]}]}]
            }
        }
    },
}
CLUSTER_SCOPED = CLUSTER_SCOPED_RESOURCES


def _permissions(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """A rule list flattened to (apiGroup, resource, verb), so grouping differences do not matter."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


# What the operator declares it uses (operator/llmtrain_operator/rbac.py), split the way the chart splits it.
OPERATOR_PERMISSIONS = _permissions(RULES)
JOB_PERMISSIONS = {p for p in OPERATOR_PERMISSIONS if p[1] not in CLUSTER_SCOPED}
DISCOVERY = {p for p in OPERATOR_PERMISSIONS if p[1] in CLUSTER_SCOPED}
LEADER_ELECTION = _permissions(LEADER_ELECTION_RULES)  # a Role in the release namespace


@pytest.fixture(scope="module")
def schemas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kubeconform-schemas")
    write_kubernetes_schemas(swagger_path(), out, BUILTIN_KINDS)
    write_crd_schema(yaml.safe_load((CHART / "crds" / CRD_NAME).read_text()), out)
    return out


def test_chart_crd_is_the_generated_one():
    generated = REPO / "crds" / CRD_NAME
    assert generated.is_file(), "crds/ has no generated CRD: run `make crds`"
    assert (CHART / "crds" / CRD_NAME).read_text() == generated.read_text(), (
        "charts/llmtrain-operator/crds/ differs from crds/: run `make crds`"
    )


@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["default-values", "non-default-values"])
def test_chart_passes_helm_lint_strict(tmp_path, values):
    argv = [binary("helm"), "lint", "--strict", str(CHART), "--namespace", RELEASE_NAMESPACE, *kube_version()]
    if values is not None:
        (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
        argv += ["--values", str(tmp_path / "values.yaml")]
    result = run(argv, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["default-values", "non-default-values"])
def test_rendered_chart_is_valid_for_kubeconform_strict(tmp_path, schemas, values):
    manifests = helm_template(tmp_path, values, "--include-crds").stdout
    # The Prometheus Operator's kinds have no schema offline; test_monitors_* check them field by field.
    result = kubeconform(tmp_path, schemas, manifests, "-skip", "ServiceMonitor,PodMonitor")
    assert result.returncode == 0, result.stdout + result.stderr
    objects = [d for d in yaml.safe_load_all(manifests) if d]
    monitors = [o for o in objects if o["kind"] in ("ServiceMonitor", "PodMonitor")]
    summary = f"Valid: {len(objects) - len(monitors)}, Invalid: 0, Errors: 0, Skipped: {len(monitors)}"
    assert summary in result.stdout, result.stdout


def test_kubeconform_rejects_a_misspelt_field_so_the_validation_above_can_fail(tmp_path, schemas):
    manifests = helm_template(tmp_path).stdout.replace("serviceAccountName:", "serviceAcountName:")
    result = kubeconform(tmp_path, schemas, manifests, "-skip", "ServiceMonitor,PodMonitor")
    assert result.returncode != 0 and "serviceAcountName" in result.stdout


def test_examples_are_valid_llmtrainingjobs_for_kubeconform_strict(tmp_path, schemas):
    manifests = "\n---\n".join(p.read_text() for p in sorted((REPO / "examples").glob("*.yaml")))
    result = kubeconform(tmp_path, schemas, manifests)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = manifests.replace("globalBatchSize:", "globalBatchSise:", 1)
    assert kubeconform(tmp_path, schemas, broken).returncode != 0, "the CRD schema must reject unknown spec fields"


def _leader_election_role(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in find(objects, "Role") if r["metadata"]["name"].endswith("-leader-election")]


def test_cluster_wide_install_grants_exactly_what_the_operator_declares(tmp_path):
    objects = render(tmp_path)
    (role,) = find(objects, "ClusterRole")
    assert _permissions(role["rules"]) == OPERATOR_PERMISSIONS
    assert find(objects, "Role") == _leader_election_role(objects)  # no job rules in any namespace Role
    (binding,) = find(objects, "ClusterRoleBinding")
    (account,) = find(objects, "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": RELEASE_NAMESPACE}
    ]


def test_operator_permissions_are_least_privilege():
    resources = {resource for _, resource, _ in OPERATOR_PERMISSIONS}
    assert "*" not in resources and "secrets" not in resources
    assert not {verb for *_, verb in OPERATOR_PERMISSIONS} & {"*", "escalate", "bind", "impersonate"}
    assert {("", "pods", "create"), ("llmtrain.dev", "llmtrainingjobs/status", "patch")} <= OPERATOR_PERMISSIONS
    assert {
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
        ("", "nodes", "get"),
        ("", "nodes", "list"),
        ("", "nodes", "watch"),
    } == DISCOVERY, "cluster-wide, the operator only discovers CRDs and namespaces (kopf) and reads nodes (preflight)"


def test_listed_namespaces_get_roles_and_only_discovery_is_cluster_wide(tmp_path):
    objects = render(tmp_path, {"watchNamespaces": ["team-a", "team-b"]})
    (cluster_role,) = find(objects, "ClusterRole")
    assert _permissions(cluster_role["rules"]) == DISCOVERY
    roles = [r for r in find(objects, "Role") if r not in _leader_election_role(objects)]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert _permissions(role["rules"]) == JOB_PERMISSIONS
    bindings = [b for b in find(objects, "RoleBinding") if not b["metadata"]["name"].endswith("-leader-election")]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["subjects"][0]["namespace"] == RELEASE_NAMESPACE


def test_no_rbac_objects_when_rbac_create_is_false(tmp_path):
    objects = render(tmp_path, {"rbac": {"create": False}})
    assert not {o["kind"] for o in objects} & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def _operator_container(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    (deployment,) = find(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return deployment, container


def test_leader_election_gets_a_lease_role_in_the_release_namespace_only(tmp_path):
    objects = render(tmp_path)
    (role,) = _leader_election_role(objects)
    assert role["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert _permissions(role["rules"]) == LEADER_ELECTION
    (binding,) = find(objects, "RoleBinding", role["metadata"]["name"])
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert not _leader_election_role(render(tmp_path, {"leaderElection": {"enabled": False}, "replicas": 1}))


def test_operator_deployment_is_two_replicas_electing_a_leader_with_liveness_and_metrics(tmp_path):
    deployment, container = _operator_container(render(tmp_path))
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate"}  # the standby holds on while one is replaced
    name = deployment["metadata"]["name"]
    assert {
        "--leader-elect",
        f"--leader-election-namespace={RELEASE_NAMESPACE}",
        f"--leader-election-name={name}",
    } <= set(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http-metrics": 8080, "health": 8081}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_without_leader_election_the_operator_is_one_recreated_replica(tmp_path):
    deployment, container = _operator_container(render(tmp_path, {"leaderElection": {"enabled": False}, "replicas": 1}))
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "--leader-elect" not in container["args"]
    refused = helm_template(tmp_path, {"leaderElection": {"enabled": False}}, check=False)  # replicas: 2
    assert refused.returncode != 0 and "replicas > 1 needs leaderElection.enabled" in refused.stderr


def test_operator_runs_an_explicit_command_with_the_contracts_flags(tmp_path):
    _, container = _operator_container(render(tmp_path, FULL_VALUES))
    assert container["command"] == ["llmtrain-operator"]
    assert container["args"] == [
        "--metrics-port=9100",
        "--health-port=9101",
        "--trainer-image=registry.example.com/llmtrain/trainer:1.2.3-cuda",
        "--resync-seconds=30",
        "--status-interval-seconds=20",
        "--leader-elect",
        f"--leader-election-namespace={RELEASE_NAMESPACE}",
        "--leader-election-name=llmtrain-llmtrain-operator",
        "--namespace=team-a",
        "--namespace=team-b",
        "--verbose",
    ]
    assert container["image"] == "registry.example.com/llmtrain/operator:1.2.3"


def test_operator_cli_accepts_the_charts_arguments(tmp_path):
    from llmtrain_operator.main import parse_args

    _, container = _operator_container(render(tmp_path, FULL_VALUES))
    args = parse_args(container["args"])
    assert args.namespaces == ["team-a", "team-b"]
    assert args.trainer_image == "registry.example.com/llmtrain/trainer:1.2.3-cuda"
    assert (args.metrics_port, args.health_port, args.resync_seconds) == (9100, 9101, 30)
    assert args.verbose is True
    assert (args.leader_elect, args.leader_election_namespace) == (True, RELEASE_NAMESPACE)


def test_images_default_to_the_charts_app_version(tmp_path):
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    _, container = _operator_container(render(tmp_path))
    assert container["image"].endswith(f":{app_version}")
    assert f"--trainer-image=ghcr.io/llmtrain/trainer:{app_version}" in container["args"]
    assert not any(a.startswith("--namespace") for a in container["args"]), "default: every namespace"


def _assert_restricted(pod_spec: dict[str, Any]) -> None:
    """The "restricted" Pod Security profile, as the chart must satisfy it (the server check is in integration)."""
    pod_sc = pod_spec.get("securityContext", {})
    for container in pod_spec["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
        assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile"))
        assert seccomp == {"type": "RuntimeDefault"}
        assert isinstance(container["command"], list) and container["command"], "explicit command required"


def test_operator_and_test_pods_satisfy_the_restricted_profile(tmp_path):
    objects = render(tmp_path)
    deployment, _ = _operator_container(objects)
    _assert_restricted(deployment["spec"]["template"]["spec"])
    (test_pod,) = find(objects, "Pod")
    _assert_restricted(test_pod["spec"])


def test_helm_test_pod_checks_healthz_through_the_service(tmp_path):
    objects = render(tmp_path)
    (service,) = find(objects, "Service")
    (pod,) = find(objects, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    health = {p["name"]: p["port"] for p in service["spec"]["ports"]}["health"]
    url = pod["spec"]["containers"][0]["command"][-1]
    assert url == f"http://{service['metadata']['name']}.{RELEASE_NAMESPACE}.svc:{health}/healthz"


def test_metrics_service_selects_the_operator_pod(tmp_path):
    objects = render(tmp_path)
    (service,) = find(objects, "Service")
    deployment, _ = _operator_container(objects)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "http-metrics": "http-metrics",
        "health": "health",
    }


def test_monitors_and_dashboard_render_only_when_enabled(tmp_path):
    kinds = {o["kind"] for o in render(tmp_path)}
    assert not kinds & {"ServiceMonitor", "PodMonitor"}
    assert not find(render(tmp_path), "ConfigMap")
    enabled = render(tmp_path, FULL_VALUES)
    assert len(find(enabled, "ServiceMonitor")) == len(find(enabled, "PodMonitor")) == 1
    (dashboard,) = find(enabled, "ConfigMap")
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_service_monitor_scrapes_the_operators_metrics_port(tmp_path):
    objects = render(tmp_path, FULL_VALUES)
    (monitor,) = find(objects, "ServiceMonitor")
    (service,) = find(objects, "Service")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [RELEASE_NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["interval"] == "15s"


def test_pod_monitor_selects_the_trainer_pods_the_operator_builds(tmp_path):
    from llmtrain_operator.api import LLMTrainingJobSpec
    from llmtrain_operator.builders import JobRef, build_pod

    spec = LLMTrainingJobSpec.model_validate(
        {"model": {"preset": "tiny"}, "training": {"steps": 2, "globalBatchSize": 1}}
    )
    pod = build_pod(JobRef("demo", "team-a", "uid-1"), spec, rank=0, attempt=0, default_image="trainer:1")
    (monitor,) = find(render(tmp_path, FULL_VALUES), "PodMonitor")
    labels = pod["metadata"]["labels"]
    for expression in monitor["spec"]["selector"]["matchExpressions"]:
        assert expression["key"] in labels
        if expression["operator"] == "In":
            assert labels[expression["key"]] in expression["values"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    port_names = {p["name"] for c in pod["spec"]["containers"] for p in c["ports"]}
    assert endpoint["port"] in port_names
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    all_namespaces = render(tmp_path, {"podMonitor": {"enabled": True}})
    assert find(all_namespaces, "PodMonitor")[0]["spec"]["namespaceSelector"] == {"any": True}


def _exported_metric_names() -> set[str]:
    """Every llmtrain_* name in the trainer's, operator's and contract's sources, with the suffixes Prometheus adds
    (the trainer's metric names live in llmtrain_contract.metrics)."""
    names: set[str] = set()
    sources = [*(REPO / "trainer_image").rglob("*.py"), *(REPO / "operator").rglob("*.py")]
    for source in [*sources, *(REPO / "contract").rglob("*.py")]:
        for name in re.findall(r"""["'](llmtrain_[a-z0-9_]+)["']""", source.read_text()):
            names |= {name, f"{name}_total", f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    # prometheus_client names operator metrics from a prefix plus a suffix in some code bases; accept both spellings.
    return names


def test_dashboard_plots_only_metrics_the_code_exports(tmp_path):
    (configmap,) = find(render(tmp_path, {"grafanaDashboard": {"enabled": True}}), "ConfigMap")
    dashboard = json.loads(configmap["data"]["llmtrain.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bllmtrain_[a-z0-9_]+", e)}
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("loss", "tokens/s", "flops utilisation", "memory", "restarts"):
        assert topic in titles, f"the dashboard has no {topic} panel"
    missing = used - _exported_metric_names()
    assert not missing, f"dashboard queries metrics nobody exports: {sorted(missing)}"
