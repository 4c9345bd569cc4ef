"""The CI workflows and shell scripts that cannot run here (no Docker, no GitHub) are at least lint-clean.

shellcheck (Debian package) and actionlint (`go install`) are installed by `make test`; when one is missing the
test is skipped with the command that installs it, never silently passed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

# helm, kubeconform, shellcheck or actionlint: built or installed by `make cluster-bins system-deps`
pytestmark = pytest.mark.tools

REPO = Path(__file__).resolve().parents[3]
TOOLS = Path(os.environ.get("LLMTRAIN_CACHE", Path.home() / ".cache" / "llmtrain")) / "tools" / "bin"
SCRIPTS = sorted(REPO.glob("hack/**/*.sh"))
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yaml"))


def _tool(name: str, install: str) -> str:
    found = shutil.which(name) or (str(TOOLS / name) if (TOOLS / name).is_file() else None)
    if found is None:
        pytest.skip(f"{name} is not installed ({install})")
    return found


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO)


def test_the_promised_scripts_and_workflows_exist():
    assert REPO / "hack" / "kind-e2e.sh" in SCRIPTS
    assert {p.name for p in WORKFLOWS} >= {"ci.yaml", "e2e-kind.yaml"}
    assert os.access(REPO / "hack" / "kind-e2e.sh", os.X_OK), "hack/kind-e2e.sh must be executable"


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.relative_to(REPO).as_posix() for p in SCRIPTS])
def test_shell_script_is_shellcheck_clean(script):
    shellcheck = _tool("shellcheck", "apt-get install -y shellcheck")
    result = _run([shellcheck, "--external-sources", str(script)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflows_are_actionlint_clean():
    actionlint = _tool(
        "actionlint", f"GOTOOLCHAIN=local GOBIN={TOOLS} go install github.com/rhysd/actionlint/cmd/actionlint@v1.7.12"
    )
    # actionlint also runs shellcheck over every `run:` block when shellcheck is on PATH.
    result = _run([actionlint, "-no-color", *map(str, WORKFLOWS)])
    assert result.returncode == 0, result.stdout + result.stderr


def _steps(workflow: str) -> list[dict]:
    doc = yaml.safe_load((REPO / ".github" / "workflows" / workflow).read_text())
    return [step for job in doc["jobs"].values() for step in job["steps"]]


def test_ci_workflow_runs_make_test():
    assert any("make test" in step.get("run", "") for step in _steps("ci.yaml"))


def test_kind_workflow_runs_the_kind_script():
    assert any(step.get("run", "").strip() == "hack/kind-e2e.sh" for step in _steps("e2e-kind.yaml"))


def test_kind_script_builds_loads_installs_and_runs_the_e2e_suite_against_kind():
    text = (REPO / "hack" / "kind-e2e.sh").read_text()
    for needle in (
        "--target operator",
        "--target trainer",
        "load docker-image",
        'upgrade --install "$RELEASE" "$REPO/charts/llmtrain-operator"',
        'test "$RELEASE"',
        "-m pytest tests/e2e",
        "export KUBECONFIG",
    ):
        assert needle in text, f"kind-e2e.sh lacks {needle!r}"
