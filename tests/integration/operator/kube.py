"""Helpers for the operator's integration tests: kubectl JSON reads, job manifests, the operator as a subprocess.

Node pods run a stand-in Python snippet instead of torchrun: the operator is started with
LLMTRAIN_DEV_COMMAND_OVERRIDE=1 and each job carries its snippet in the llmtrain.dev/dev-command annotation
(the trainer itself is exercised end to end by the e2e suite).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from llmtrain_operator.constants import job_label_value
from llmtrain_testbed.testing import Cluster, wait_for

REPO = Path(__file__).resolve().parents[3]
CRD = REPO / "crds" / "llmtrain.dev_llmtrainingjobs.yaml"

# Stand-in for torchrun: `r` is the node rank, `a` the restart attempt; the job's snippet decides what happens.
_PRELUDE = "import os, sys, time\nr = int(os.environ['NODE_RANK'])\na = int(os.environ['LLMTRAIN_RESTART_ATTEMPT'])\n"
SLEEP_FOREVER = "time.sleep(3600)"


def standin(snippet: str) -> list[str]:
    return ["python", "-c", _PRELUDE + snippet]


def job_manifest(name: str, snippet: str | None = SLEEP_FOREVER, nodes: int = 2, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if snippet is not None:
        meta["annotations"] = {"llmtrain.dev/dev-command": json.dumps(standin(snippet))}
    base = {
        "nodes": nodes,
        "procsPerNode": 1,
        "model": {"preset": "tiny"},
        "training": {"steps": 10, "globalBatchSize": nodes},
        "precision": "fp32",
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
    }
    return {"apiVersion": "llmtrain.dev/v1alpha1", "kind": "LLMTrainingJob", "metadata": meta, "spec": {**base, **spec}}


class Kube:
    """kubectl with JSON in and out, bound to one namespace."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster, self.ns = cluster, namespace

    def apply(self, manifest: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl("apply", "-n", self.ns, "-f", "-", input=yaml.safe_dump(manifest), check=check)

    def create(self, manifest: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl("create", "-n", self.ns, "-f", "-", input=yaml.safe_dump(manifest), check=check)

    def get(self, kind: str, name: str | None = None, selector: str | None = None) -> Any:
        args = ["get", kind, "-n", self.ns, "-o", "json"]
        if name:
            args.insert(2, name)
        if selector:
            args += ["-l", selector]
        result = self.cluster.kubectl(*args, check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr:
                return None
            raise AssertionError(result.stderr)
        return json.loads(result.stdout)

    def job(self, name: str) -> dict[str, Any]:
        return self.get("llmtrainingjobs", name) or {}

    def status(self, name: str) -> dict[str, Any]:
        return self.job(name).get("status") or {}

    def pods(self, job: str) -> list[dict[str, Any]]:
        return self.get("pods", selector=f"llmtrain.dev/job-name={job_label_value(job)}")["items"]

    def delete(self, kind: str, name: str) -> None:
        self.cluster.kubectl("delete", kind, name, "-n", self.ns, "--wait=true")

    def condition(self, name: str, condition_type: str) -> dict[str, Any]:
        conditions = self.status(name).get("conditions") or []
        return next((c for c in conditions if c["type"] == condition_type), {})

    def merge_patch(self, kind: str, name: str, patch: dict[str, Any]) -> None:
        self.cluster.kubectl("patch", kind, name, "-n", self.ns, "--type=merge", "-p", json.dumps(patch))

    def events(self, name: str) -> list[dict[str, Any]]:
        items = self.get("events")["items"]
        return [e for e in items if e["involvedObject"].get("name") == name]

    def wait_phase(self, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
        return wait_for(
            lambda: (s := self.status(name)).get("phase") == phase and s,
            timeout=timeout,
            what=f"job {name} to be {phase} (status: {self.status(name)})",
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OperatorProcess:
    """`python -m llmtrain_operator --namespace NS` against the test cluster, logging to a temp file."""

    def __init__(
        self, cluster: Cluster, namespace: str, extra_args: tuple[str, ...] = (), kubeconfig: str | None = None
    ) -> None:
        self.cluster, self.namespace, self.extra_args = cluster, namespace, extra_args
        self.kubeconfig = kubeconfig or cluster.kubeconfig
        self.log = Path(tempfile.mkstemp(prefix=f"operator-{namespace}-", suffix=".log")[1])
        self.metrics_port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = {
            **os.environ,
            "KUBECONFIG": self.kubeconfig,
            "PYTHONPATH": os.pathsep.join(
                [str(REPO / "contract"), str(REPO / "operator"), os.environ.get("PYTHONPATH", "")]
            ),
            "LLMTRAIN_DEV_COMMAND_OVERRIDE": "1",
            "POD_NAMESPACE": self.namespace,  # where a --leader-elect operator keeps its Lease
        }
        argv = [sys.executable, "-m", "llmtrain_operator", "--namespace", self.namespace, "--resync-seconds", "2"]
        argv += ["--status-interval-seconds", "2"]
        argv += ["--metrics-port", str(self.metrics_port), "--health-port", str(_free_port()), *self.extra_args]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        return self

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, like a crashed or evicted operator."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def running_operator(
    cluster: Cluster, namespace: str, *extra_args: str, kubeconfig: str | None = None
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster, namespace, extra_args, kubeconfig).start()
    try:
        yield op
    finally:
        op.stop()
        print(f"--- operator log ({op.log}) ---\n{op.logs()[-6000:]}")  # shown by pytest when the test fails
        op.log.unlink(missing_ok=True)
