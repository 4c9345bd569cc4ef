"""The test bed's own suites: unit tests of the kubelet's pure parts, integration tests against a running test bed.

The `cluster`, `namespace` and `kubectl` fixtures (and the integration tests' timeout) come from the package's
pytest plugin, llmtrain_testbed/pytest_plugin.py, which tests/conftest.py uses too.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))

pytest_plugins = ["llmtrain_testbed.pytest_plugin"]
