"""Integration tests run against a real API server (the test bed, or the cluster KUBECONFIG names).

The `cluster`, `namespace` and `kubectl` fixtures live in tests/conftest.py so tests/e2e shares them. Here: every
integration test is bounded by a timeout (pytest-timeout), so a hung cluster fails a test instead of the run.
"""

from __future__ import annotations

import pytest

DEFAULT_TIMEOUT_S = 300  # generous: the first test also pays for bringing the test bed up


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("timeout") is None and "integration" in item.path.parts:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT_S))
