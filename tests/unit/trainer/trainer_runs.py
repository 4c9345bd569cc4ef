"""Launching real trainer runs for the tests: CPU, gloo, one process or several under torchrun.

Runs are small (the tiny preset, 32-token sequences, 12 steps, fp32) so the whole suite fits a few minutes
on 2 cores; conftest.py trains each layout once per session and several tests assert on the same run.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
STEPS = 12
SEQ_LEN = 32
GLOBAL_BATCH = 8
RUN_TIMEOUT_S = 240

BASE_CONFIG = {
    "jobName": "trainer-test",
    "model": {"preset": "tiny", "kvHeads": 2},  # kvHeads 2 exercises grouped-query attention
    "data": {"source": "synthetic", "seqLen": SEQ_LEN},
    "precision": "fp32",
    "optimizer": {"lr": 0.003},
    "schedule": {"warmupSteps": 2, "decay": "cosine"},
    "training": {"steps": STEPS, "globalBatchSize": GLOBAL_BATCH, "microBatchSize": 2, "gradClip": 1.0},
    "metrics": {"port": 0},
    "logging": {"interval": 1, "json": True},
}


def merged(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    workdir: Path
    events: list[dict] = field(default_factory=list)

    def of(self, event: str) -> list[dict]:
        return [e for e in self.events if e.get("event") == event]

    @property
    def losses(self) -> dict[int, float]:
        return {e["step"]: e["loss"] for e in self.of("step")}

    @property
    def grad_norms(self) -> dict[int, float]:
        return {e["step"]: e["grad_norm"] for e in self.of("step")}

    @property
    def termination_message(self) -> dict | None:
        path = self.workdir / "termination-log"
        return json.loads(path.read_text()) if path.exists() else None

    def explain(self) -> str:
        return f"rc={self.returncode}\n--- stdout\n{self.stdout[-4000:]}\n--- stderr\n{self.stderr[-4000:]}"


def trainer_command(
    config_path: Path, nproc: int, *, nnodes: int = 1, node_rank: int = 0, rdzv_port: int = 0
) -> list[str]:
    """`python -m llmtrain_trainer` for one process, else torchrun: standalone, or one node of a c10d rendezvous."""
    if nproc == 1 and nnodes == 1:
        return [sys.executable, "-m", "llmtrain_trainer", "--config", str(config_path)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if nnodes == 1:
        torchrun.append("--standalone")
    else:
        torchrun += [
            f"--nnodes={nnodes}",
            f"--node-rank={node_rank}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{rdzv_port}",
            "--rdzv-id=trainer-test",
        ]
    return [*torchrun, "-m", "llmtrain_trainer", "--config", str(config_path)]


def trainer_env(workdir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO / "trainer_image"), env.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
        LLMTRAIN_BACKEND="gloo",
        LLMTRAIN_TERMINATION_LOG=str(workdir / "termination-log"),
    )
    env.update(extra or {})
    return env


def parse_events(stdout: str) -> list[dict]:
    events = []
    for line in stdout.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                events.append(json.loads(line))
    return events


def write_config(config: dict, workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.json"
    path.write_text(json.dumps(config))
    return path


def start_trainer(
    config_path: Path,
    workdir: Path,
    *,
    nproc: int = 1,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_port: int = 0,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """Start one node of a run (a torchrun agent, or the trainer itself for one process) with its output piped."""
    return subprocess.Popen(
        trainer_command(config_path, nproc, nnodes=nnodes, node_rank=node_rank, rdzv_port=rdzv_port),
        env=trainer_env(workdir, env),
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_trainer(
    config: dict, workdir: Path, *, nproc: int = 1, nnodes: int = 1, env: dict[str, str] | None = None
) -> Run:
    """Train with `config` on `nnodes` simulated nodes (local torchrun agents) of `nproc` processes each."""
    config_path = write_config(config, workdir)
    port = free_port() if nnodes > 1 else 0
    procs = [
        start_trainer(config_path, workdir, nproc=nproc, nnodes=nnodes, node_rank=node, rdzv_port=port, env=env)
        for node in range(nnodes)
    ]
    try:
        outputs = [p.communicate(timeout=RUN_TIMEOUT_S) for p in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    returncode = next((p.returncode for p in procs if p.returncode), 0)
    stdout = outputs[0][0]  # node 0 holds global rank 0, the one that logs
    stderr = "\n".join(err for _, err in outputs)
    return Run(returncode, stdout, stderr, workdir, parse_events(stdout))


LAYOUTS = {
    # name: (nodes, processes per node, parallelism, training overrides)
    "single": (1, 1, {"dataParallel": "fsdp", "sharding": "zero3"}, {}),
    "ddp": (1, 2, {"dataParallel": "ddp"}, {}),
    # activation checkpointing must not change the numbers: recomputation replays the same ops
    "zero2": (1, 2, {"dataParallel": "fsdp", "sharding": "zero2"}, {"activationCheckpointing": "selective"}),
    "zero3": (1, 2, {"dataParallel": "fsdp", "sharding": "zero3"}, {}),
    "tp2": (1, 2, {"dataParallel": "fsdp", "tensorParallel": 2}, {"activationCheckpointing": "full"}),
    "fsdp2x_tp2": (1, 4, {"dataParallel": "fsdp", "sharding": "zero3", "tensorParallel": 2}, {}),
    # two simulated nodes (two torchrun agents on a c10d rendezvous): replicate across them, shard within
    "hybrid_2nodes": (2, 1, {"dataParallel": "fsdp", "sharding": "hybrid"}, {}),
}
RESUME_LAYOUT = "zero3"  # also checkpoints (asynchronously) every STEPS // 2 steps, for the resume tests
CHECKPOINT_INTERVAL = STEPS // 2


def layout_config(name: str, checkpoint_dir: Path | None = None) -> dict:
    _, _, parallelism, training = LAYOUTS[name]
    config = merged(BASE_CONFIG, {"parallelism": parallelism, "training": training})
    if checkpoint_dir is not None:
        config["checkpoint"] = {"dir": str(checkpoint_dir), "interval": CHECKPOINT_INTERVAL, "asyncSave": True}
    return config


def run_layout(name: str, workdir: Path, checkpoint_dir: Path | None = None) -> Run:
    nnodes, nproc, _, _ = LAYOUTS[name]
    return run_trainer(layout_config(name, checkpoint_dir), workdir, nproc=nproc, nnodes=nnodes)
