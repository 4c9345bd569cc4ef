"""Shared pytest setup: import paths for the repo's packages, and the cluster fixtures for integration and e2e.

Fixtures (see hack/testbed/testing.py for the helpers behind them):
    cluster    (session) the test bed, brought up if needed, or the cluster KUBECONFIG points at;
               `.kubeconfig`, `.api_client` (kubernetes ApiClient), `.kubectl(*args)`, `.helm(*args)`, `.is_testbed`
    namespace  a fresh namespace per test, named after the test, deleted afterwards (without waiting)
    kubectl    shorthand for cluster.kubectl
The kubernetes client and the test bed are imported lazily, so unit tests pay nothing for them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

REPO = Path(__file__).resolve().parents[1]
for _part in ("hack", "contract", "operator", "trainer_image"):
    if str(REPO / _part) not in sys.path:
        sys.path.insert(0, str(REPO / _part))

if TYPE_CHECKING:
    import subprocess

    from testbed.testing import Cluster


# Test tiers (`make test-fast`, `make test-unit`, `make test-tools`; see CONTRIBUTING.md).
MARKERS = {
    "tools": "needs helm, kubeconform, shellcheck or actionlint (make cluster-bins system-deps)",
    "slow": "launches real trainer processes (torchrun on CPU/gloo): seconds to minutes each",
}
TRAINER_UNIT_TESTS = REPO / "tests" / "unit" / "trainer"
PURE_TRAINER_MODULES = {"test_trainer_pure.py"}


def pytest_configure(config: pytest.Config) -> None:
    for name, meaning in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {meaning}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every trainer unit test but the pure ones starts trainer processes: mark them slow in one place."""
    for item in items:
        path = Path(str(item.path))
        if path.parent == TRAINER_UNIT_TESTS and path.name not in PURE_TRAINER_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    from testbed.testing import session_cluster

    with session_cluster() as reachable:
        yield reachable


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    from testbed.testing import fresh_namespace

    with fresh_namespace(cluster, request.node.name) as name:
        yield name


@pytest.fixture
def kubectl(cluster: Cluster) -> Callable[..., subprocess.CompletedProcess[str]]:
    return cluster.kubectl
