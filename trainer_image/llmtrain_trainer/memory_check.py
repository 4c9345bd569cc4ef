"""The preflight memory estimate next to what the run really used, for the trainer's log (issue #12, part 3).

build.py computes the run's estimate once (`MemoryReport`); train.py logs `memory` (estimate, measured peak, error)
once, after this process's second step, the first steady-state one (a fresh run's step 1 creates AdamW's state
inside `optimizer.step()`, so its backward runs without it and its peak is lower than every later step's), or at
the last step when fewer remain. A large error tells us the estimator (llmtrain_contract.memory) has drifted from
the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from llmtrain_contract.memory import GIB, MemoryConfig, MemoryEstimate

from .config import TrainerConfig
from .model import ModelArgs
from .parallelize import ParallelDims


def run_estimate(
    cfg: TrainerConfig, args: ModelArgs, dims: ParallelDims, *, accum: int, device_type: str
) -> MemoryEstimate:
    """The estimate for this run as the trainer resolved it: shape (tokenizer's vocabulary), mesh, accumulation."""
    return MemoryConfig(
        shape=args,
        world_size=dims.world_size,
        procs_per_node=dims.dp_shard * dims.tp if dims.sharding == "hybrid" else dims.world_size,
        data_parallel=dims.data_parallel,
        sharding=dims.sharding,
        tensor_parallel=dims.tp,
        precision=cfg.precision,
        micro_batch_size=cfg.training.micro_batch_size,
        seq_len=cfg.data.seq_len,
        activation_checkpointing=cfg.training.activation_checkpointing,
        gradient_accumulation_steps=accum,
        loss_parallel=cfg.parallelism.loss_parallel,
        device_type=device_type,
    ).estimate()


@dataclass
class MemoryReport:
    """The run's estimate and the one step after which it is logged beside the measured peak."""

    estimate: MemoryEstimate
    step: int | None = None  # set at this process's first step

    def due(self, step: int, total_steps: int) -> bool:
        """True once: at this process's second step, or at the last step if that comes first."""
        if self.step is None:
            self.step = min(step + 1, total_steps)
        return step == self.step


def measured_peak(device: torch.device) -> int | None:
    """Peak allocated bytes on this rank's GPU since the start (None on CPU: no allocator statistics there)."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.max_memory_allocated(device))


def memory_record(estimate: MemoryEstimate, measured: int | None) -> dict:
    """Fields for the log line: estimated allocated peak, measured peak, relative error, the one-line breakdown."""
    record = {
        "estimate_gib": round(estimate.allocated / GIB, 3),
        "estimate_total_gib": round(estimate.total / GIB, 3),
        "estimate": estimate.summary(),
    }
    if measured:
        record["measured_gib"] = round(measured / GIB, 3)
        record["error_pct"] = round(100.0 * (estimate.allocated - measured) / measured, 1)
    return record
