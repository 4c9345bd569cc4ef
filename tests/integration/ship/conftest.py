"""Fixtures for the chart, RBAC, Pod Security and example checks on a real API server (the test bed or KUBECONFIG)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from .chart_on_cluster import CHART_CRD, RESTRICTED_LABEL


@pytest.fixture(scope="session")
def llmtrain_crd(cluster: Any) -> str:
    """The chart's CRD (identical to crds/; a unit test makes sure) applied and Established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART_CRD))
    name = yaml.safe_load(CHART_CRD.read_text())["metadata"]["name"]
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    return name


@pytest.fixture
def restricted_namespace(cluster: Any, namespace: str) -> str:
    """A fresh namespace that enforces the "restricted" Pod Security profile."""
    cluster.kubectl("label", "namespace", namespace, RESTRICTED_LABEL, "--overwrite")
    return namespace


@pytest.fixture
def cluster_scoped(cluster: Any) -> Iterator[list[str]]:
    """`kind/name` of the cluster-scoped objects a test creates; deleted afterwards (namespaces clean up the rest)."""
    created: list[str] = []
    yield created
    if created:
        cluster.kubectl("delete", "--ignore-not-found", "--wait=false", *created, check=False)
