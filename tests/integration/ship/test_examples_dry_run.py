"""Every shipped example is accepted by the real API server (schema, CEL rules, PVC validation) in a dry run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from .chart_on_cluster import REPO

EXAMPLES = sorted((REPO / "examples").glob("*.yaml")) + sorted((REPO / "examples" / "custom").glob("*/job.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[str(p.relative_to(REPO / "examples")) for p in EXAMPLES])
def test_example_is_accepted_by_a_server_side_dry_run(cluster, llmtrain_crd, namespace, example: Path):
    result = cluster.kubectl("apply", "--dry-run=server", "--namespace", namespace, "-f", str(example))
    for doc in yaml.safe_load_all(example.read_text()):
        if doc:
            assert doc["metadata"]["name"] in result.stdout


def test_a_broken_example_is_rejected_naming_the_field(cluster, llmtrain_crd, namespace):
    """The dry run above really validates: break one CEL rule of an example and the server says which field."""
    job = yaml.safe_load((REPO / "examples" / "llama-8b-fsdp-tp.yaml").read_text())
    job["spec"]["parallelism"]["tensorParallel"] = 3
    result = cluster.kubectl(
        "apply", "--dry-run=server", "--namespace", namespace, "-f", "-", input=yaml.safe_dump(job), check=False
    )
    assert result.returncode != 0
    assert "tensorParallel" in result.stderr
