#!/usr/bin/env python3
"""Throughput of the llmtrain trainer for one shape and parallel layout; prints one JSON line.

It runs the real trainer (`python -m llmtrain_trainer`, under torchrun when --nproc > 1) on synthetic data
with JSON logs every step (or every --log-interval steps: only those wait for the device), drops the warm-up
steps (compilation, allocator growth) and reports medians: tokens/s (job-wide), step time, achieved TFLOP/s,
MFU (when the device's peak is known or --peak-flops is given) and peak memory. `--repeats N` runs it N times
and reports the median of the runs' medians (useful on shared CPUs).

Shapes match the Hugging Face baseline (hf_baseline.py, kept beside the checkout in ../shared/bench, not in
this repository): gpt2-124m (seq 1024, batch 32) and llama-1b = its llama-1.1b
(seq 2048, batch 8); FLOPs/token use the same formula (6 x non-embedding params + 12 x layers x dim x seq).

Examples:
  # H200, next to the HF baseline (same shapes, batch and precision)
  python bench/trainer_throughput.py --preset llama-1b --compile
  python ../shared/bench/hf_baseline.py --shape llama-1.1b --compile
  # CPU, FSDP vs DDP on the tiny preset with 2 processes
  python bench/trainer_throughput.py --preset tiny --nproc 2 --parallel zero3 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = {  # preset: (seq, sequences per rank per step) as in the HF baseline
    "tiny": (64, 2),
    "gpt2-124m": (1024, 32),
    "llama-1b": (2048, 8),
    "llama-8b": (2048, 2),
}
LAYOUTS = {
    "ddp": {"dataParallel": "ddp"},
    "zero2": {"dataParallel": "fsdp", "sharding": "zero2"},
    "zero3": {"dataParallel": "fsdp", "sharding": "zero3"},
    "hybrid": {"dataParallel": "fsdp", "sharding": "hybrid"},
}


def build_config(a: argparse.Namespace, seq: int, micro: int) -> dict:
    dp = a.nproc // a.tp
    return {
        "jobName": f"bench-{a.preset}",
        "model": {"preset": a.preset},
        "data": {"source": "synthetic", "seqLen": seq},
        "parallelism": {**LAYOUTS[a.parallel], "tensorParallel": a.tp},
        "precision": a.precision,
        "optimizer": {"lr": 3e-4},
        "schedule": {"warmupSteps": 1, "decay": "constant"},
        "training": {
            "steps": a.warmup + a.steps,
            "globalBatchSize": micro * dp * a.grad_accum,
            "microBatchSize": micro,
            "activationCheckpointing": a.ac,
            "compile": a.compile,
        },
        "metrics": {"port": 0, **({"peakFlops": a.peak_flops} if a.peak_flops else {})},
        "logging": {"interval": a.log_interval, "json": True},
    }


def run_once(a: argparse.Namespace, config: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(json.dumps(config))
        cmd = [sys.executable, "-m", "llmtrain_trainer", "--config", str(path)]
        if a.nproc > 1:
            cmd[1:2] = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={a.nproc}", "-m"]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "trainer_image"), env.get("PYTHONPATH", "")])
        env.setdefault("OMP_NUM_THREADS", "1")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout)
    if proc.returncode != 0:
        raise SystemExit(f"trainer failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    start = next(e for e in events if e["event"] == "start")
    steps = [e for e in events if e["event"] == "step" and e["step"] > a.warmup]
    return {
        "tokens_per_s": statistics.median(e["tokens_per_s"] for e in steps),
        "step_s": statistics.median(e["step_s"] for e in steps),
        "mfu": statistics.median(e["mfu"] for e in steps) if steps[0]["mfu"] is not None else None,
        "flops_per_token": start["flops_per_token"],
        "params": start["params"],
        "device": start["device"],
        "peak_mem_GiB": max(e["mem_gib"] for e in steps),
        "loss": steps[-1]["loss"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=DEFAULTS, default="llama-1b")
    ap.add_argument("--seq", type=int, help="sequence length (default: the preset's baseline shape)")
    ap.add_argument("--micro-batch", type=int, help="sequences per rank per forward (default: baseline batch)")
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--nproc", type=int, default=1, help="processes (GPUs) on this machine")
    ap.add_argument("--parallel", choices=LAYOUTS, default="zero3")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16")
    ap.add_argument("--ac", choices=("none", "full", "selective"), default="none")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--steps", type=int, default=10, help="measured steps")
    ap.add_argument("--warmup", type=int, default=3, help="steps not measured")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument(
        "--log-interval",
        type=int,
        default=1,
        help="log (and read the step's values on the host) every N steps; the others do not wait for the device",
    )
    ap.add_argument("--peak-flops", type=float, help="peak FLOP/s per device for MFU (default: GPU table)")
    ap.add_argument("--timeout", type=int, default=1800)
    a = ap.parse_args()
    seq, micro = DEFAULTS[a.preset]
    seq, micro = a.seq or seq, a.micro_batch or micro
    config = build_config(a, seq, micro)
    runs = [run_once(a, config) for _ in range(a.repeats)]
    tps = statistics.median(r["tokens_per_s"] for r in runs)
    first = runs[0]
    mfus = [r["mfu"] for r in runs if r["mfu"] is not None]
    print(
        json.dumps(
            {
                "impl": "llmtrain",
                "preset": a.preset,
                "parallel": a.parallel,
                "tp": a.tp,
                "nproc": a.nproc,
                "precision": a.precision,
                "compile": a.compile,
                "ac": a.ac,
                "device": first["device"],
                "seq": seq,
                "global_batch": config["training"]["globalBatchSize"],
                "params_M": round(first["params"] / 1e6, 3),
                "step_s": round(statistics.median(r["step_s"] for r in runs), 4),
                "tokens_per_s": round(tps, 1),
                "tokens_per_s_runs": [round(r["tokens_per_s"], 1) for r in runs],
                "achieved_TFLOPs": round(tps * first["flops_per_token"] / 1e12, 4),
                "mfu": round(statistics.median(mfus), 4) if mfus else None,
                "peak_mem_GiB": max(r["peak_mem_GiB"] for r in runs),
                "loss": runs[-1]["loss"],
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
