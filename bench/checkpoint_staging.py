#!/usr/bin/env python3
"""Time to stage a state dict for an async save: a new stager per save (what dcp.async_save does when given
none) vs the trainer's one stager per run, whose buffers are reused from the second save on. Prints one JSON line.

    python bench/checkpoint_staging.py --mib 256 --saves 5

On CUDA the trainer's stager also pins its buffers and copies on a side stream (checkpoint.staging_options).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from llmtrain_trainer.checkpoint import staging_options
from torch.distributed.checkpoint.staging import DefaultStager


def state_dict(mib: int, device: str) -> dict[str, torch.Tensor]:
    """`mib` MiB of fp32 tensors of 4 MiB each, like a model's and optimizer's shards."""
    return {f"t{i}": torch.randn(1 << 20, device=device) for i in range(mib // 4)}


def stage_seconds(stager: DefaultStager, state: dict) -> float:
    started = time.perf_counter()
    staged = stager.stage(state)
    if hasattr(staged, "result"):
        staged.result()
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--saves", type=int, default=5)
    a = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    state, options = state_dict(a.mib, device), staging_options(device)
    fresh = []
    for _ in range(a.saves):
        stager = DefaultStager(options)
        fresh.append(stage_seconds(stager, state))
        stager.close()
    reused_stager = DefaultStager(options)
    reused = [stage_seconds(reused_stager, state) for _ in range(a.saves)]
    reused_stager.close()
    result = {
        "device": device,
        "mib": a.mib,
        "new_stager_per_save_s": round(statistics.median(fresh), 4),
        "one_stager_first_save_s": round(reused[0], 4),
        "one_stager_later_saves_s": round(statistics.median(reused[1:]), 4),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
