"""Shared pytest setup: import paths for the repo's packages, and the cluster fixtures for integration and e2e.

The fixtures (`cluster`, `namespace`, `kubectl`) and the integration tests' timeout come from the test bed's pytest
plugin, testbed/llmtrain_testbed/pytest_plugin.py (helpers in testbed/llmtrain_testbed/testing.py); the test bed's
own suites in testbed/tests use the same plugin.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
for _part in ("testbed", "contract", "operator", "trainer_image"):
    if str(REPO / _part) not in sys.path:
        sys.path.insert(0, str(REPO / _part))

pytest_plugins = ["llmtrain_testbed.pytest_plugin"]

# Test tiers (`make test-fast`, `make test-unit`, `make test-tools`; see CONTRIBUTING.md).
MARKERS = {
    "tools": "needs helm, kubeconform, shellcheck or actionlint (make cluster-bins system-deps)",
    "slow": "launches real trainer processes (torchrun on CPU/gloo): seconds to minutes each",
}
TRAINER_UNIT_TESTS = REPO / "tests" / "unit" / "trainer"
PURE_TRAINER_MODULES = {
    "test_trainer_pure.py",
    "test_trainer_data.py",
    "test_trainer_prepare.py",
    "test_hf_job_config.py",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, meaning in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {meaning}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every trainer unit test but the pure ones starts trainer processes: mark them slow in one place."""
    for item in items:
        path = Path(str(item.path))
        if path.parent == TRAINER_UNIT_TESTS and path.name not in PURE_TRAINER_MODULES:
            item.add_marker(pytest.mark.slow)
