"""values.schema.json is strict: every documented value is described, and a typo or a bad value stops helm with a
message that names it."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from .chart_tools import CHART, helm_template

# helm, kubeconform, shellcheck or actionlint: built or installed by `make cluster-bins system-deps`
pytestmark = pytest.mark.tools

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
# Objects whose keys are free-form by nature (labels, annotations, resource names, selectors).
OPEN_MAPS = {"annotations", "labels", "podAnnotations", "podLabels", "nodeSelector", "requests", "limits"}


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = SCHEMA["definitions"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _closed_objects(node: dict[str, Any], path: str) -> list[str]:
    """Paths of objects in the schema that have properties but accept unknown keys."""
    node = _resolve(node)
    found = []
    if "properties" in node:
        if node.get("additionalProperties") is not False:
            found.append(path or "<root>")
        for key, child in node["properties"].items():
            found += _closed_objects(child, f"{path}.{key}".lstrip("."))
    if isinstance(node.get("items"), dict):
        found += _closed_objects(node["items"], f"{path}[]")
    return found


def _undocumented(values: Any, node: dict[str, Any], path: str) -> list[str]:
    """Keys of values.yaml the schema does not describe."""
    node = _resolve(node)
    if not isinstance(values, dict) or path.rsplit(".", 1)[-1] in OPEN_MAPS:
        return []
    props = node.get("properties", {})
    missing = [f"{path}.{k}".lstrip(".") for k in values if k not in props]
    for key, value in values.items():
        if key in props:
            missing += _undocumented(value, props[key], f"{path}.{key}")
    return missing


def test_every_default_value_is_described_by_the_schema():
    assert _undocumented(VALUES, SCHEMA, "") == []


def test_every_object_with_known_fields_rejects_unknown_ones():
    assert _closed_objects(SCHEMA, "") == []


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"replicaCount": 2}, "replicaCount"),
        ({"image": {"repository": "x", "tagg": "1"}}, "tagg"),
        ({"image": {"repository": "x", "pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
        ({"metrics": {"port": 70000}}, "port"),
        ({"serviceMonitor": {"enabled": "yes"}}, "enabled"),
        ({"serviceMonitor": {"interval": "30 seconds"}}, "interval"),
        ({"securityContext": {"runAsNonroot": True}}, "runAsNonroot"),
        ({"podSecurityContext": {"seccompProfile": {"type": "Permissive"}}}, "type"),
        ({"resources": {"requsts": {"cpu": "1"}}}, "requsts"),
        ({"tolerations": [{"key": "a", "operater": "Exists"}]}, "operater"),
        ({"extraArgs": ["namespace=x"]}, "extraArgs"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else v,
)
def test_helm_rejects_values_that_break_the_schema_naming_the_value(tmp_path, values, named):
    result = helm_template(tmp_path, values, check=False)
    assert result.returncode != 0, f"helm accepted {values}"
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert named in result.stderr, result.stderr


def test_helm_accepts_the_documented_defaults(tmp_path):
    helm_template(tmp_path, VALUES)
