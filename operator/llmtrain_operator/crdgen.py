"""Render the LLMTrainingJob CRD from the pydantic models, so the schema and the operator cannot disagree.

Pydantic's JSON Schema is not a Kubernetes *structural* schema: it uses $ref, anyOf-with-null for Optional, const,
prefixItems and titles. `structural()` rewrites it: refs inlined, Optional[X] -> X, Literal -> enum, int-or-string
-> x-kubernetes-int-or-string, and `default: {}` on sub-objects so the API server applies nested defaults (except
on the built-in trainer's sections, marked `x-llmtrain-builtin`: CEL must see whether the user wrote them).

    python -m llmtrain_operator.crdgen > crds/llmtrain.dev_llmtrainingjobs.yaml
    python -m llmtrain_operator.crdgen --check crds/llmtrain.dev_llmtrainingjobs.yaml   # exit 1 when stale
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from . import api
from .constants import CATEGORIES, GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION

BUILTIN_MARKER = next(iter(api.BUILTIN))
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "crds" / f"{GROUP}_{PLURAL}.yaml"


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline a $ref (keeping sibling keys, whose validations are appended to the target's)."""
    if "$ref" not in node and not ("allOf" in node and len(node["allOf"]) == 1):
        return node
    siblings = {k: v for k, v in node.items() if k not in ("$ref", "allOf")}
    ref = node["$ref"] if "$ref" in node else node["allOf"][0]["$ref"]
    target = copy.deepcopy(defs[ref.split("/")[-1]])
    rules = target.pop("x-kubernetes-validations", []) + siblings.pop("x-kubernetes-validations", [])
    target.update(siblings)
    if rules:
        target["x-kubernetes-validations"] = rules
    return _resolve(target, defs)


def _strip_null(node: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Optional[X] (anyOf [X, null]) -> X; returns whether it was optional."""
    variants = node.get("anyOf")
    if not variants:
        return node, False
    non_null = [v for v in variants if v.get("type") != "null"]
    if len(non_null) == len(variants) or len(non_null) != 1:
        return node, False
    merged = {k: v for k, v in node.items() if k != "anyOf"}
    merged = {**non_null[0], **merged}
    if merged.get("default", 0) is None:
        merged.pop("default")
    return merged, True


def structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Turn one pydantic JSON-schema node into a structural OpenAPI v3 node (recursively)."""
    node = _resolve(node, defs)
    node, _ = _strip_null(node)
    node = _resolve(node, defs)
    out: dict[str, Any] = {}
    if node.get("x-kubernetes-int-or-string"):
        out["x-kubernetes-int-or-string"] = True
        for key in ("description", "default", "x-kubernetes-validations"):
            if key in node:
                out[key] = node[key]
        return out
    if node.get("x-kubernetes-preserve-unknown-fields"):
        out = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        if "description" in node:
            out["description"] = node["description"]
        return out
    if "const" in node:
        out["type"] = node.get("type", "string")
        out["enum"] = [node["const"]]
    for key, value in node.items():
        if key in ("title", "const", "$defs", "anyOf", "allOf", "prefixItems"):
            continue
        if key == "properties":
            out["properties"] = {}
            required = set(node.get("required", []))
            for name, prop in value.items():
                child = structural(prop, defs)
                if child.pop(BUILTIN_MARKER, False):
                    child.pop("default", None)
                elif name not in required and _is_plain_subobject(prop, defs) and "default" not in child:
                    child["default"] = {}
                out["properties"][name] = child
        elif key == "items":
            out["items"] = structural(value, defs)
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out["additionalProperties"] = structural(value, defs)
        elif key == "type" and value == "null":
            continue
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):  # JSON Schema number -> OpenAPI v3.0 flag
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        else:
            out[key] = value
    if "prefixItems" in node:  # tuples: a fixed-length array of one type
        out["type"] = "array"
        out["items"] = structural(node["prefixItems"][0], defs)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def _is_plain_subobject(prop: dict[str, Any], defs: dict[str, Any]) -> bool:
    """A non-Optional nested model: defaulting it to {} lets the server fill in its fields' defaults."""
    if "anyOf" in prop:
        return False
    resolved = _resolve(prop, defs)
    return "properties" in resolved and not resolved.get("x-kubernetes-preserve-unknown-fields")


def _schema_of(model: type[api._Model]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return structural(raw, defs)


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Job phase."},
    {"name": "Nodes", "type": "integer", "jsonPath": ".spec.nodes", "description": "Node pods in the gang."},
    {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step", "description": "Last optimizer step."},
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss", "description": "Latest training loss."},
    {
        "name": "Eval",
        "type": "number",
        "jsonPath": ".status.progress.evalLoss",
        "description": "Latest validation loss.",
    },
    {
        "name": "Tok/s",
        "type": "number",
        "jsonPath": ".status.progress.tokensPerSecond",
        "description": "Training tokens per second.",
    },
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts", "description": "Gang restarts."},
    {
        "name": "Sharding",
        "type": "string",
        "jsonPath": ".status.sharding",
        "description": "FSDP sharding the trainer runs (the operator's choice when spec.parallelism leaves it unset).",
        "priority": 1,  # kubectl get -o wide
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def render_crd() -> dict[str, Any]:
    """The CustomResourceDefinition as a dict."""
    spec_schema = _schema_of(api.LLMTrainingJobSpec)
    spec_schema["description"] = api.LLMTrainingJobSpec.__doc__
    status_schema = _schema_of(api.LLMTrainingJobStatus)
    status_schema["description"] = api.LLMTrainingJobStatus.__doc__
    root = {
        "type": "object",
        "description": api.LLMTrainingJob.__doc__,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "API version: llmtrain.dev/v1alpha1."},
            "kind": {"type": "string", "description": "LLMTrainingJob."},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "llmtrain", "app.kubernetes.io/part-of": "llmtrain"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": CATEGORIES,
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


def render_yaml() -> str:
    header = "# Generated by `python -m llmtrain_operator.crdgen` from llmtrain_operator/api.py. Do not edit.\n"
    return header + yaml.safe_dump(render_crd(), sort_keys=False, width=120)


def generated_file_cli(argv: list[str] | None, *, doc: str, render: Callable[[], str], default: Path) -> int:
    """Print a generated file, or with --check [PATH] exit 1 when the committed copy is stale (tests, CI)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--check",
        nargs="?",
        const=str(default),
        metavar="PATH",
        help=f"compare with PATH (default: {default.name} in the repo) and exit 1 if it is stale",
    )
    args = parser.parse_args(argv)
    text = render()
    if args.check is None:
        sys.stdout.write(text)
        return 0
    path = Path(args.check)
    if not path.exists() or path.read_text() != text:
        print(f"{path} is stale: regenerate it (`make crds`)", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return generated_file_cli(argv, doc=__doc__ or "", render=render_yaml, default=DEFAULT_PATH)


if __name__ == "__main__":
    raise SystemExit(main())
