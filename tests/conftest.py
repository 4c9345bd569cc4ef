"""Shared pytest setup: import paths for the repo's packages, and the cluster fixtures for integration and e2e.

The fixtures (`cluster`, `namespace`, `kubectl`) and the integration tests' timeout come from the test bed's pytest
plugin, testbed/llmtrain_testbed/pytest_plugin.py (helpers in testbed/llmtrain_testbed/testing.py); the test bed's
own suites in testbed/tests use the same plugin.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _part in ("testbed", "operator", "trainer_image"):
    if str(REPO / _part) not in sys.path:
        sys.path.insert(0, str(REPO / _part))

pytest_plugins = ["llmtrain_testbed.pytest_plugin"]
