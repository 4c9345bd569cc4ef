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


def trainer_command(config_path: Path, nproc: int) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "llmtrain_trainer", "--config", str(config_path)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
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


def run_trainer(config: dict, workdir: Path, *, nproc: int = 1, env: dict[str, str] | None = None) -> Run:
    """Train with `config` in `nproc` processes; returns when they exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.json"
    config_path.write_text(json.dumps(config))
    proc = subprocess.run(
        trainer_command(config_path, nproc),
        env=trainer_env(workdir, env),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr, workdir, parse_events(proc.stdout))


LAYOUTS = {
    # name: (processes, parallelism)
    "single": (1, {"dataParallel": "fsdp", "sharding": "zero3", "tensorParallel": 1}),
    "ddp": (2, {"dataParallel": "ddp", "tensorParallel": 1}),
    "zero2": (2, {"dataParallel": "fsdp", "sharding": "zero2", "tensorParallel": 1}),
    "zero3": (2, {"dataParallel": "fsdp", "sharding": "zero3", "tensorParallel": 1}),
    "tp2": (2, {"dataParallel": "fsdp", "sharding": "zero3", "tensorParallel": 2}),
    "fsdp2x_tp2": (4, {"dataParallel": "fsdp", "sharding": "zero3", "tensorParallel": 2}),
}
RESUME_LAYOUT = "zero3"  # also checkpoints every STEPS // 2 steps, for the resume tests
CHECKPOINT_INTERVAL = STEPS // 2


def layout_config(name: str, checkpoint_dir: Path | None = None) -> dict:
    _, parallelism = LAYOUTS[name]
    config = merged(BASE_CONFIG, {"parallelism": parallelism})
    if checkpoint_dir is not None:
        config["checkpoint"] = {"dir": str(checkpoint_dir), "interval": CHECKPOINT_INTERVAL, "keep": 3}
    return config
