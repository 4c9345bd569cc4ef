"""JSON schemas for kubeconform, made from a live API server's OpenAPI v2 document (offline validation).

kubeconform normally downloads schemas from GitHub; this machine has no internet. The apiserver serves the exact
schemas of the pinned version (and of installed CRDs), so we convert those, as openapi2jsonschema does:
one file per kind (`configmap-v1.json`, `deployment-apps-v1.json`) whose `$ref`s point into `_definitions.json`,
plus a `-strict` directory that forbids unknown fields (kubeconform -strict).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

INT_OR_STRING = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
QUANTITY = {"oneOf": [{"type": "string"}, {"type": "number"}]}
SPECIAL = {
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": INT_OR_STRING,
    "io.k8s.apimachinery.pkg.api.resource.Quantity": QUANTITY,
}


def schema_location(out: Path) -> str:
    """The `-schema-location` template for a directory written by `write`."""
    return str(out / "schemas{{ .StrictSuffix }}" / "{{ .ResourceKind }}{{ .KindSuffix }}.json")


def file_name(group: str, version: str, kind: str) -> str:
    """kubeconform's naming: kind lowercased, then the group's first label (none for core) and the version."""
    suffix = f"-{group.split('.')[0].lower()}-{version}" if group else f"-{version}"
    return f"{kind.lower()}{suffix}.json"


def write(openapi_v2: dict[str, Any], out: Path) -> str:
    """Write plain and strict schema directories under `out`; returns the `-schema-location` template."""
    definitions = openapi_v2.get("definitions", {})
    for strict in (False, True):
        directory = out / ("schemas-strict" if strict else "schemas")
        directory.mkdir(parents=True, exist_ok=True)
        converted = {name: _convert(name, d, strict) for name, d in definitions.items()}
        (directory / "_definitions.json").write_text(json.dumps({"definitions": converted}))
        for name, definition in definitions.items():
            for gvk in definition.get("x-kubernetes-group-version-kind", []):
                kind_schema = _rewrite_refs(converted[name], "_definitions.json")
                path = directory / file_name(gvk.get("group", ""), gvk["version"], gvk["kind"])
                path.write_text(json.dumps(kind_schema))
    return schema_location(out)


def _convert(name: str, definition: dict[str, Any], strict: bool) -> Any:
    if name in SPECIAL:
        return SPECIAL[name]
    return _node(definition, strict)


def _node(node: Any, strict: bool) -> Any:
    """Make a swagger schema node a JSON schema kubeconform validates YAML manifests with."""
    if not isinstance(node, dict):
        return node
    if node.get("x-kubernetes-int-or-string") or node.get("format") == "int-or-string":
        return INT_OR_STRING
    out = {key: value for key, value in node.items() if key != "format"}
    # Only formats jsonschema asserts the same way Kubernetes does; int32, byte, ... are annotations.
    if node.get("format") in ("date-time",):
        out["format"] = node["format"]
    if isinstance(node.get("properties"), dict):
        out["properties"] = {name: _node(sub, strict) for name, sub in node["properties"].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), dict):
            out[key] = _node(node[key], strict)
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(node.get(key), list):
            out[key] = [_node(sub, strict) for sub in node[key]]
    if isinstance(out.get("type"), str):
        # Manifests often carry explicit nulls (e.g. `creationTimestamp: null`), which the API server accepts.
        out["type"] = [out["type"], "null"]
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if strict and "properties" in node and "additionalProperties" not in node and not preserve:
        out["additionalProperties"] = False
    return out


def _rewrite_refs(node: Any, target: str) -> Any:
    if isinstance(node, list):
        return [_rewrite_refs(item, target) for item in node]
    if not isinstance(node, dict):
        return node
    return {
        key: (target + value if key == "$ref" and value.startswith("#/") else _rewrite_refs(value, target))
        for key, value in node.items()
    }
