"""The generated CRD: structural (what the API server demands), complete, and in sync with crds/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from llmtrain_operator import crdgen

REPO = Path(__file__).resolve().parents[3]
CRD_FILE = REPO / "crds" / "llmtrain.dev_llmtrainingjobs.yaml"


def _version() -> dict[str, Any]:
    return crdgen.render_crd()["spec"]["versions"][0]


def _walk(node: Any, path: str = ""):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def _schema() -> dict[str, Any]:
    return _version()["schema"]["openAPIV3Schema"]


def test_crd_file_in_repo_is_the_generated_one():
    assert CRD_FILE.read_text() == crdgen.render_yaml(), "crds/ is stale: run `make crds`"


def test_check_flag_exits_nonzero_for_a_stale_file(tmp_path):
    stale = tmp_path / "crd.yaml"
    stale.write_text(crdgen.render_yaml().replace("ltj", "xyz"))
    fresh = tmp_path / "fresh.yaml"
    fresh.write_text(crdgen.render_yaml())
    assert crdgen.main(["--check", str(stale)]) == 1
    assert crdgen.main(["--check", str(fresh)]) == 0


def test_module_prints_the_crd_yaml():
    out = subprocess.run(
        [sys.executable, "-m", "llmtrain_operator.crdgen"],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": os.pathsep.join(str(REPO / part) for part in ("operator", "contract"))},
        timeout=60,
    ).stdout
    assert yaml.safe_load(out)["kind"] == "CustomResourceDefinition"


def test_schema_is_structural_no_refs_no_anyof_no_null_no_titles():
    for path, node in _walk(_schema()):
        assert "$ref" not in node, path
        assert "$defs" not in node, path
        assert "allOf" not in node and "oneOf" not in node, path
        assert "title" not in node, path
        assert node.get("type") != "null", path
        assert "prefixItems" not in node, path
        if "anyOf" in node:  # only allowed with int-or-string
            assert node.get("x-kubernetes-int-or-string"), path


def test_every_node_with_properties_has_a_type_and_every_field_a_description():
    for path, node in _walk(_schema()):
        if "properties" in node and isinstance(node["properties"], dict) and path.count(".properties") >= 1:
            assert node.get("type") == "object", path
            for name, child in node["properties"].items():
                assert child.get("description"), f"{path}.{name} has no description"


def test_exclusive_minimum_is_the_openapi_v3_boolean():
    lr = _schema()["properties"]["spec"]["properties"]["optimizer"]["properties"]["lr"]
    assert lr["minimum"] == 0 and lr["exclusiveMinimum"] is True


def test_names_scope_status_subresource_and_printer_columns():
    crd = crdgen.render_crd()
    names = crd["spec"]["names"]
    assert crd["metadata"]["name"] == "llmtrainingjobs.llmtrain.dev"
    assert (names["kind"], names["plural"], names["shortNames"]) == ("LLMTrainingJob", "llmtrainingjobs", ["ltj"])
    assert "llmtrain" in names["categories"]
    assert crd["spec"]["scope"] == "Namespaced"
    version = _version()
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Phase", "Nodes", "Step", "Loss", "Eval", "Tok/s", "Restarts", "Sharding", "Age"]
    assert next(c for c in version["additionalPrinterColumns"] if c["name"] == "Sharding")["priority"] == 1  # -o wide


def test_procs_per_node_is_int_or_string_defaulting_to_auto():
    procs = _schema()["properties"]["spec"]["properties"]["procsPerNode"]
    assert procs["x-kubernetes-int-or-string"] is True
    assert procs["default"] == "auto"
    assert "type" not in procs


def test_optional_fields_have_no_null_default_and_subobjects_default_to_empty():
    spec = _schema()["properties"]["spec"]["properties"]
    assert "default" not in spec["checkpoint"]  # Optional: absent means no checkpoints
    assert spec["runPolicy"]["default"] == {}
    assert spec["runPolicy"]["properties"]["backoffLimit"]["default"] == 3
    assert spec["parallelism"]["properties"]["dataParallel"]["enum"] == ["ddp", "fsdp"]
    assert spec["metrics"]["properties"]["port"]["default"] == 9090


def test_cel_rules_cover_cross_field_checks_and_immutability():
    spec = _schema()["properties"]["spec"]
    rules = {r["rule"] for r in spec["x-kubernetes-validations"]}
    assert any("tensorParallel" in r and "procsPerNode" in r for r in rules)
    assert any("warmupSteps" in r and "training.steps" in r for r in rules)
    props = spec["properties"]
    for immutable in ("model", "parallelism"):
        assert "self == oldSelf" in {r["rule"] for r in props[immutable]["x-kubernetes-validations"]}, immutable
    model_rules = " ".join(r["rule"] for r in props["model"]["x-kubernetes-validations"])
    assert "has(self.preset)" in model_rules
    assert props["checkpoint"]["x-kubernetes-validations"][0]["rule"] == "has(self.claimName) != has(self.volume)"
    for path, node in _walk(_schema()):
        for rule in node.get("x-kubernetes-validations", []):
            assert rule.get("message"), f"{path}: rule {rule['rule']} has no message"


def test_free_form_kubernetes_objects_preserve_unknown_fields():
    spec = _schema()["properties"]["spec"]["properties"]
    assert spec["checkpoint"]["properties"]["volume"]["x-kubernetes-preserve-unknown-fields"] is True
    assert spec["scheduling"]["properties"]["tolerations"]["items"]["x-kubernetes-preserve-unknown-fields"] is True
    assert spec["podTemplate"]["properties"]["env"]["items"]["x-kubernetes-preserve-unknown-fields"] is True


def test_status_conditions_are_a_map_list_keyed_by_type():
    conditions = _schema()["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert conditions["items"]["properties"]["type"]["enum"] == [
        "Created",
        "Queued",
        "Running",
        "Progressing",
        "Restarting",
        "Resized",
        "Succeeded",
        "Failed",
        "Suspended",
    ]


def test_api_reference_doc_is_up_to_date():
    from llmtrain_operator import apidoc

    assert apidoc.main(["--check"]) == 0, "docs/api.md is stale: run `python -m llmtrain_operator.apidoc > docs/api.md`"
