"""Fixtures of the operator's integration tests: the CRD installed once, a kubectl bound to the test's namespace,
and the operator running against that namespace for the test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from llmtrain_testbed.testing import Cluster

from .kube import CRD, Kube, OperatorProcess, running_operator


@pytest.fixture(scope="session")
def crd(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "crd/llmtrainingjobs.llmtrain.dev", "--timeout=60s")


@pytest.fixture
def kube(cluster: Cluster, namespace: str, crd: None) -> Kube:
    return Kube(cluster, namespace)


@pytest.fixture
def operator(cluster: Cluster, namespace: str, crd: None) -> Iterator[OperatorProcess]:
    with running_operator(cluster, namespace) as op:
        yield op
