"""Helpers for the ship integration tests: render the chart with the cluster's helm, apply objects, name things."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "llmtrain-operator"
CHART_CRD = CHART / "crds" / "llmtrain.dev_llmtrainingjobs.yaml"
RESTRICTED_LABEL = "pod-security.kubernetes.io/enforce=restricted"


def unique(prefix: str) -> str:
    """A name no other test (or earlier run) uses: cluster-scoped objects must not collide."""
    return f"{prefix}-{secrets.token_hex(3)}"


def server_version(cluster: Any) -> str:
    """The API server's version, so `helm template` renders for this cluster (not helm's built-in default)."""
    return json.loads(cluster.kubectl("version", "--output=json").stdout)["serverVersion"]["gitVersion"]


def render(cluster: Any, release: str, namespace: str, *flags: str) -> list[dict[str, Any]]:
    """`helm template` of the chart, as objects (the helm test pod included, CRDs not)."""
    argv = ["template", release, str(CHART), "--namespace", namespace, "--kube-version", server_version(cluster)]
    out = cluster.helm(*argv, *flags).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def find(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def as_list(objects: list[dict[str, Any]]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})


def pod_from_template(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    """The Pod a Deployment's ReplicaSet would create, for an admission dry run."""
    template = deployment["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": template["metadata"].get("labels", {})},
        "spec": template["spec"],
    }
