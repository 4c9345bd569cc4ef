"""Custom-trainer jobs run the way the operator runs them, without a cluster: two "node pods" on this machine.

Each node's command and environment come from the operator's own builders (`build_pod`), so the exit-code wrapper,
the torchrun options and every variable a script reads are the real ones; only what the cluster would provide is
replaced: the rendezvous host `<job>-node-0.<job>` by 127.0.0.1 (on a free port), the pod IP, the checkpoint
volume (a temporary directory) and the termination-message file (one per node).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtrain_operator.api import LLMTrainingJobSpec
from llmtrain_operator.builders import JobRef, build_pod, master_addr
from llmtrain_operator.constants import CHECKPOINT_DIR, RDZV_PORT

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples" / "custom"
SCRIPTS = Path(__file__).parent / "scripts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    rank: int
    proc: subprocess.Popen
    log: Path
    termination: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def record(self) -> str:
        return self.termination.read_text() if self.termination.exists() else ""


@dataclass
class Gang:
    nodes: list[Node] = field(default_factory=list)

    def wait(self, timeout: float = 600) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        for node in self.nodes:
            try:
                codes.append(node.proc.wait(timeout=max(deadline - time.monotonic(), 1)))
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"the gang did not finish in {timeout} s:\n{self.explain()}") from None
        return codes

    def kill(self) -> None:
        for node in self.nodes:
            if node.proc.poll() is None:
                os.killpg(node.proc.pid, signal.SIGKILL)
                node.proc.wait()

    def explain(self) -> str:
        return "\n".join(f"--- node {n.rank} (exit {n.proc.poll()}):\n{n.text()[-4000:]}" for n in self.nodes)


def launch(
    name: str, spec: dict[str, Any], workdir: Path, *, attempt: int = 0, metrics_port: int | None = None
) -> Gang:
    """Start every node of the job as the operator would, attempt `attempt`; returns at once."""
    parsed = LLMTrainingJobSpec.model_validate(spec)
    job = JobRef(name, "default", f"uid-{name}-{attempt}")
    host, port = master_addr(job), free_port()
    checkpoints = workdir / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    gang = Gang()
    for rank in range(parsed.nodes):
        container = build_pod(job, parsed, rank, attempt, "unused")["spec"]["containers"][0]
        env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "PYTHONPATH": f"{REPO / 'contract'}:{REPO / 'trainer_image'}",
            "HOME": str(workdir),
            "OMP_NUM_THREADS": "1",
        }
        for var in container["env"]:
            value = "127.0.0.1" if "valueFrom" in var else str(var["value"])
            env[var["name"]] = _local(value, host, port, checkpoints)
        termination = workdir / f"termination-{attempt}-{rank}.log"
        env["LLMTRAIN_TERMINATION_LOG"] = str(termination)
        if metrics_port is not None:
            env["LLMTRAIN_METRICS_PORT"] = str(metrics_port)
        argv = [_local(arg, host, port, checkpoints) for arg in container["command"]]
        argv = [sys.executable if arg == "python" else arg for arg in argv]
        log = workdir / f"node-{attempt}-{rank}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                argv,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=container.get("workingDir") or workdir,
                start_new_session=True,
            )
        gang.nodes.append(Node(rank, proc, log, termination))
    return gang


def _local(value: str, host: str, port: int, checkpoints: Path) -> str:
    value = value.replace(f"{host}:{RDZV_PORT}", f"127.0.0.1:{port}").replace(host, "127.0.0.1")
    if value == str(RDZV_PORT):
        return str(port)
    return value.replace(CHECKPOINT_DIR, str(checkpoints))


def workers(gang: Gang, script: str) -> list[int]:
    """PIDs of the worker processes (not the torchrun agents) running `script` in this gang."""
    agents = {node.proc.pid for node in gang.nodes}  # the wrapper runs torchrun's agent in-process
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent in agents and script.encode() in cmdline:
            found.append(int(entry.name))
    return sorted(found)
