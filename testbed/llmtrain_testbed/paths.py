"""Where the test bed finds its binaries and keeps its state; one place so every part agrees."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

K8S_VERSION = "v1.37.2"
PROJECT_DIR = Path(__file__).resolve().parents[1]  # testbed/: this package's project (pyproject.toml, tests)
REPO_ROOT = PROJECT_DIR.parent
CACHE_DIR = Path(os.environ.get("LLMTRAIN_CACHE", Path.home() / ".cache" / "llmtrain"))


class MissingBinary(RuntimeError):
    """A Kubernetes binary is not built yet; the message says how to build it."""


def bin_dir() -> Path:
    """The directory `make cluster-bins` fills (override: LLMTRAIN_K8S_BIN_DIR)."""
    override = os.environ.get("LLMTRAIN_K8S_BIN_DIR")
    return Path(override) if override else CACHE_DIR / f"k8s-{K8S_VERSION}" / "bin"


def state_dir() -> Path:
    """The running cluster's PKI, kubeconfigs, data, logs and pid files (override: LLMTRAIN_CLUSTER_DIR)."""
    override = os.environ.get("LLMTRAIN_CLUSTER_DIR")
    return Path(override) if override else CACHE_DIR / "cluster"


def binary(name: str) -> Path:
    """Absolute path of a built binary, or MissingBinary with the command that builds it."""
    path = bin_dir() / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise MissingBinary(f"{name} not found in {bin_dir()}: run `make cluster-bins` (hack/build-bins.sh)")
    return path


def kubectl_binary() -> str:
    """The built kubectl, else one on PATH (suites pointed at kind or a real cluster may not have built ours)."""
    built = bin_dir() / "kubectl"
    if built.is_file():
        return str(built)
    found = shutil.which("kubectl")
    if found is None:
        raise MissingBinary(f"kubectl not found in {bin_dir()} nor on PATH: run `make cluster-bins`")
    return found


def python() -> str:
    """The project's venv Python (it has the kubernetes client the kubelet needs), else the running one."""
    venv = CACHE_DIR / "venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable
