"""pytest plugin: the cluster fixtures every suite that talks to Kubernetes shares (helpers in testing.py).

Use it from a conftest.py with `pytest_plugins = ["llmtrain_testbed.pytest_plugin"]` (tests/conftest.py and
testbed/tests/conftest.py do).

    cluster    (session) the test bed, brought up if needed, or the cluster KUBECONFIG points at;
               `.kubeconfig`, `.api_client` (kubernetes ApiClient), `.kubectl(*args)`, `.helm(*args)`, `.is_testbed`
    namespace  a fresh namespace per test, named after the test, deleted afterwards (without waiting)
    kubectl    shorthand for cluster.kubectl

Every test under a directory named `integration` is also bounded by a timeout (pytest-timeout), so a hung cluster
fails a test instead of the run. The kubernetes client and the test bed are imported lazily, so unit tests pay
nothing for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import subprocess

    from .testing import Cluster

INTEGRATION_TIMEOUT_S = 300  # generous: the first test also pays for bringing the test bed up


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    from .testing import session_cluster

    with session_cluster() as reachable:
        yield reachable


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    from .testing import fresh_namespace

    with fresh_namespace(cluster, request.node.name) as name:
        yield name


@pytest.fixture
def kubectl(cluster: Cluster) -> Callable[..., subprocess.CompletedProcess[str]]:
    return cluster.kubectl


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("timeout") is None and "integration" in item.path.parts:
            item.add_marker(pytest.mark.timeout(INTEGRATION_TIMEOUT_S))
