"""Helpers for the chart tests: run helm and kubeconform offline, and build the JSON schemas kubeconform needs.

kubeconform normally downloads its schemas; here there is no internet, so they are generated from the Kubernetes
OpenAPI document of the version the test bed runs (api/openapi-spec/swagger.json in the k8s.io/kubernetes module
that `make cluster-bins` downloads) and, for LLMTrainingJob, from the CRD the chart ships.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "llmtrain-operator"
CRD_NAME = "llmtrain.dev_llmtrainingjobs.yaml"
RELEASE = "llmtrain"
RELEASE_NAMESPACE = "llmtrain-system"
# kubeconform's file name for a kind: `{kind}-{first label of the group}-{version}.json`, lower case.
SCHEMA_TEMPLATE = "{{ .ResourceKind }}{{ .KindSuffix }}.json"
INT_OR_STRING = {"anyOf": [{"type": "integer"}, {"type": "string"}]}
QUANTITY = {"anyOf": [{"type": "number"}, {"type": "string"}]}


def binary(name: str) -> str:
    """A binary from `make cluster-bins`, else from PATH; skip (naming the fix) when neither has it."""
    from llmtrain_testbed import paths

    built = paths.bin_dir() / name
    if built.is_file() and os.access(built, os.X_OK):
        return str(built)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not built yet: run `make cluster-bins` (hack/build-bins.sh)")
    return found


def kube_version() -> list[str]:
    """Render for the test bed's Kubernetes (a helm built with `go install` otherwise assumes v1.20)."""
    from llmtrain_testbed import paths

    return ["--kube-version", paths.K8S_VERSION]


def run(argv: list[str], scratch: Path, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool with helm's caches in `scratch`, so tests never touch the user's helm configuration."""
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(scratch / "helm-cache"),
        "HELM_CONFIG_HOME": str(scratch / "helm-config"),
        "HELM_DATA_HOME": str(scratch / "helm-data"),
    }
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, input=input, cwd=REPO)


def helm_template(
    scratch: Path, values: dict[str, Any] | None = None, *extra: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    argv = [binary("helm"), "template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, *kube_version(), *extra]
    if values is not None:
        path = scratch / f"values-{abs(hash(json.dumps(values, sort_keys=True)))}.yaml"
        path.write_text(yaml.safe_dump(values))
        argv += ["--values", str(path)]
    result = run(argv, scratch)
    if check and result.returncode != 0:
        raise AssertionError(f"helm template failed:\n{result.stderr}")
    return result


def render(scratch: Path, values: dict[str, Any] | None = None, *extra: str) -> list[dict[str, Any]]:
    """The chart's objects for these values (tests/ hooks included, CRDs not)."""
    return [d for d in yaml.safe_load_all(helm_template(scratch, values, *extra).stdout) if d]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


# ---------------------------------------------------------------- kubeconform schemas


def swagger_path() -> Path:
    """The Kubernetes OpenAPI v2 document of the test bed's version, from the Go module cache."""
    from llmtrain_testbed import paths

    modcache = os.environ.get("GOMODCACHE")
    if not modcache and shutil.which("go"):
        modcache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True).stdout.strip()
    modcache = modcache or str(Path.home() / "go" / "pkg" / "mod")
    path = Path(modcache) / f"k8s.io/kubernetes@{paths.K8S_VERSION}" / "api" / "openapi-spec" / "swagger.json"
    if not path.is_file():
        pytest.skip(f"{path} is missing: `make cluster-bins` downloads it with the k8s.io/kubernetes module")
    return path


def _strict(schema: Any) -> Any:
    """Close every object that lists its properties (unknown fields are errors) and widen the string-typed
    int-or-string and Quantity formats to what YAML users write. Walks schema keywords only, so a property that
    happens to be called `nullable` or `format` (as in JSONSchemaProps) is left alone."""
    if not isinstance(schema, dict):
        return schema
    if schema.get("format") == "int-or-string" or schema.get("x-kubernetes-int-or-string") is True:
        return {**INT_OR_STRING, **{k: v for k, v in schema.items() if k == "description"}}
    out = dict(schema)
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: _strict(v) for k, v in out["properties"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = _strict(out["items"])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(out["additionalProperties"])
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(out.get(key), list):
            out[key] = [_strict(s) for s in out[key]]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and out.get("x-kubernetes-preserve-unknown-fields") is not True
    ):
        out["additionalProperties"] = False
    if out.get("nullable") is True:
        out = {"anyOf": [{"type": "null"}, {k: v for k, v in out.items() if k != "nullable"}]}
    return out


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        found = {ref.removeprefix("#/definitions/")} if isinstance(ref, str) else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


def _closure(name: str, definitions: dict[str, Any]) -> dict[str, Any]:
    todo, seen = [name], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(_refs(definitions[current]) - seen)
    return {n: definitions[n] for n in seen}


def _file_name(group: str, version: str, kind: str) -> str:
    suffix = f"-{group.split('.')[0]}-{version}" if group else f"-{version}"
    return f"{kind.lower()}{suffix}.json"


def write_kubernetes_schemas(swagger: Path, out: Path, kinds: set[str]) -> None:
    """One standalone, strict schema file per built-in kind in `kinds`, named the way kubeconform looks it up."""
    definitions = {k: _strict(v) for k, v in json.loads(swagger.read_text())["definitions"].items()}
    definitions["io.k8s.apimachinery.pkg.api.resource.Quantity"] = QUANTITY
    for name, schema in definitions.items():
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            if gvk["kind"] in kinds:
                standalone = {**copy.deepcopy(schema), "definitions": _closure(name, definitions)}
                path = out / _file_name(gvk["group"], gvk["version"], gvk["kind"])
                path.write_text(json.dumps(standalone))


def write_crd_schema(crd: dict[str, Any], out: Path) -> None:
    """The CRD's openAPIV3Schema as kubeconform's schema for its kind (every served version)."""
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    for version in crd["spec"]["versions"]:
        schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
        (out / _file_name(group, version["name"], kind)).write_text(json.dumps(schema))


def kubeconform(scratch: Path, schemas: Path, manifests: str, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [
        binary("kubeconform"),
        "-strict",
        "-summary",
        "-output",
        "text",
        "-schema-location",
        str(schemas / SCHEMA_TEMPLATE),
        *extra,
        "-",
    ]
    return run(argv, scratch, input=manifests)
