"""The operator pod, the helm test pod and the trainer pods pass the "restricted" Pod Security profile.

A namespace labelled pod-security.kubernetes.io/enforce=restricted rejects non-compliant pods at admission, so a
server-side dry run of each pod there is the real check. Trainer pods come from the operator's own builders.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from llmtrain_operator.api import LLMTrainingJobSpec
from llmtrain_operator.builders import JobRef, build_pod

from .chart_on_cluster import REPO, as_list, find, pod_from_template, render, unique

JOB_EXAMPLES = [p for p in sorted((REPO / "examples").glob("*.yaml")) if "LLMTrainingJob" in p.read_text()]


def _dry_run(cluster, namespace: str, manifest: str, check: bool = True):
    return cluster.kubectl(
        "create", "--dry-run=server", "--namespace", namespace, "-f", "-", input=manifest, check=check
    )


def test_restricted_namespace_rejects_a_pod_without_a_security_context(cluster, restricted_namespace):
    """Control: the profile is enforced, so the admissions below mean something."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "plain"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["true"]}]},
    }
    result = _dry_run(cluster, restricted_namespace, as_list([pod]), check=False)
    assert result.returncode != 0 and "restricted" in result.stderr


@pytest.mark.parametrize("values", [[], ["--set", "watchNamespaces={team-a}"]], ids=["cluster-wide", "namespaced"])
def test_operator_and_helm_test_pods_are_admitted_in_a_restricted_namespace(cluster, restricted_namespace, values):
    objects = render(cluster, unique("psa"), restricted_namespace, *values)
    cluster.kubectl(
        "apply", "--namespace", restricted_namespace, "-f", "-", input=as_list(find(objects, "ServiceAccount"))
    )
    (deployment,) = find(objects, "Deployment")
    pods = [pod_from_template(deployment, "operator"), *find(objects, "Pod")]
    assert len(pods) == 2, "expected the operator pod and the helm test pod"
    _dry_run(cluster, restricted_namespace, as_list(pods))


@pytest.mark.parametrize("example", JOB_EXAMPLES, ids=[p.name for p in JOB_EXAMPLES])
def test_trainer_pods_are_admitted_in_a_restricted_namespace(cluster, restricted_namespace, example: Path):
    job = next(d for d in yaml.safe_load_all(example.read_text()) if d and d["kind"] == "LLMTrainingJob")
    spec = LLMTrainingJobSpec.model_validate(job["spec"])
    ref = JobRef(job["metadata"]["name"], restricted_namespace, "00000000-0000-0000-0000-000000000001")
    pods = [
        build_pod(ref, spec, rank=rank, attempt=0, default_image="ghcr.io/llmtrain/trainer:0.1.0")
        for rank in range(min(spec.nodes, 2))
    ]
    _dry_run(cluster, restricted_namespace, as_list(pods))
