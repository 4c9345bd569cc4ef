#!/usr/bin/env python3
"""The memory estimator (llmtrain_contract.memory) against measured per-rank peaks; prints one JSON line per case.

The reference runs the trainer's own code for two optimizer steps: `Transformer` built on meta, `parallelize`
(FSDP2 / AC exactly as the trainer applies them), `apply_ddp`, `build_optimizer`, and the loop body of train.py
(autocast for plain DDP, cross-entropy on `logits.float()` divided by the accumulation steps, no_sync /
set_requires_gradient_sync, clip_grad_norm, step, zero_grad(set_to_none)). Memory is measured by torch's
`MemTracker` (torch.distributed._tools.mem_tracker), a TorchDispatchMode that follows every tensor storage's
allocation and release (including FSDP's `resize_` of unsharded parameters), so it measures live tensor bytes:
what the CUDA caching allocator calls "allocated", without the CUDA context or allocator fragmentation. The peak
of the second step is reported (the first creates the optimizer state; from the second on every step repeats).

Small shapes run on real CPU tensors. With `fake` the same code runs under FakeTensorMode (no memory is touched), so
llama-1b-sized models and data-parallel degrees above 1 (a fake process group: rank 0 of N) can be measured on a
laptop; plain DDP cannot run under FakeTensorMode (`to_empty` cannot swap fake parameters into DDP), so those cases
are FSDP.

Examples:
  python bench/memory_estimate.py              # the validation grid
  python bench/memory_estimate.py --case tiny-ddp-fp32
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for sub in ("contract", "trainer_image"):
    if str(REPO / sub) not in sys.path:
        sys.path.insert(0, str(REPO / sub))

from llmtrain_contract.memory import estimate_memory  # noqa: E402
from llmtrain_contract.presets import PRESETS, ModelShape  # noqa: E402


@dataclass(frozen=True)
class Case:
    """One configuration of the validation grid (one rank's view)."""

    name: str
    shape: ModelShape
    data_parallel: str = "fsdp"
    sharding: str = "zero3"
    precision: str = "bf16"
    activation_checkpointing: str = "none"
    micro_batch_size: int = 2
    seq_len: int = 64
    accumulation: int = 1
    world_size: int = 1
    fake: bool = False  # FakeTensorMode: no real memory; needed for big shapes and world_size > 1
    device_type: str = "cpu"  # the optimizer the trainer builds there: cpu -> foreach AdamW, cuda -> fused
    extra: dict = field(default_factory=dict)


def _shape(base: str, **kw) -> ModelShape:
    return ModelShape(**{**PRESETS[base].__dict__, **kw})


SMALL = _shape("tiny", dim=128, n_layers=4, n_heads=8, n_kv_heads=2, ffn_dim=384, vocab_size=2048)  # ~1.4 M, GQA
MID = _shape("tiny", dim=384, n_layers=6, n_heads=6, n_kv_heads=6, ffn_dim=1024, vocab_size=8192, max_seq_len=512)
M25 = _shape("tiny", dim=512, n_layers=8, n_heads=8, n_kv_heads=4, ffn_dim=1408, vocab_size=8192, max_seq_len=512)

GRID: list[Case] = [
    Case("tiny-ddp-fp32", PRESETS["tiny"], data_parallel="ddp", precision="fp32"),
    Case("tiny-fsdp-bf16", PRESETS["tiny"]),
    Case("small-gqa-ddp-bf16", SMALL, data_parallel="ddp", micro_batch_size=4, seq_len=128),
    Case("small-gqa-fsdp-bf16-accum2", SMALL, micro_batch_size=4, seq_len=128, accumulation=2),
    Case("small-gqa-fsdp-fp32-full-ac", SMALL, precision="fp32", activation_checkpointing="full", seq_len=128),
    Case("mid-fsdp-bf16-mb4", MID, micro_batch_size=4, seq_len=256),
    Case("mid-fsdp-bf16-selective", MID, micro_batch_size=4, seq_len=256, activation_checkpointing="selective"),
    Case(
        "m25-ddp-bf16-full-ac",
        M25,
        data_parallel="ddp",
        micro_batch_size=2,
        seq_len=256,
        activation_checkpointing="full",
    ),
    Case("m25-fsdp-fp32-accum2", M25, precision="fp32", micro_batch_size=2, seq_len=256, accumulation=2),
    Case(
        "llama-1b-fsdp-bf16-fake", PRESETS["llama-1b"], micro_batch_size=1, seq_len=2048, fake=True, device_type="cuda"
    ),
    Case(
        "llama-1b-zero3-8ranks-fake",
        PRESETS["llama-1b"],
        micro_batch_size=2,
        seq_len=2048,
        world_size=8,
        fake=True,
        device_type="cuda",
    ),
    Case(
        "llama-1b-zero2-8ranks-full-ac-fake",
        PRESETS["llama-1b"],
        sharding="zero2",
        micro_batch_size=4,
        seq_len=2048,
        world_size=8,
        activation_checkpointing="full",
        fake=True,
        device_type="cuda",
    ),
]


def _reset_peak(tracker) -> None:
    """MemTracker has no public reset of its peak; the steady state starts at the second step."""
    current = tracker.get_tracker_snapshot("current")
    tracker._peak_mem = {dev: snap["Total"] for dev, snap in current.items()}
    tracker._peak_mem_snap = copy.deepcopy(current)


def measure(case: Case) -> dict:
    """Peak live tensor bytes of rank 0 in the second optimizer step of the trainer's code."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from llmtrain_contract.sections import OptimizerSection
    from llmtrain_trainer.model import Transformer
    from llmtrain_trainer.optim import build_optimizer, clip_grad_norm
    from llmtrain_trainer.parallelize import (
        ParallelDims,
        apply_ddp,
        build_mesh,
        mixed_precision_dtype,
        parallelize,
        uses_autocast,
    )
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    if case.world_size > 1:
        from torch.testing._internal.distributed.fake_pg import FakeStore

        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=case.world_size)
    else:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        w = case.world_size
        if case.data_parallel == "ddp":
            dims = ParallelDims(w, 1, 1, "ddp", case.sharding)
        else:
            dims = ParallelDims(1, w, 1, "fsdp", case.sharding)
        mesh = build_mesh(dims, "cpu")
        cpu = torch.device("cpu")
        tracker = MemTracker()
        with FakeTensorMode() if case.fake else nullcontext(), tracker:
            with torch.device("meta"):
                model = Transformer(case.shape)
            parallelize(
                model, mesh, dims, precision=case.precision, ac=case.activation_checkpointing, compile_blocks=False
            )
            model.to_empty(device=cpu)
            model.init_buffers(cpu)
            if not case.fake:
                with torch.no_grad():
                    for p in model.parameters():
                        p.normal_(0.0, 0.02)
            if dims.data_parallel == "ddp":
                model = apply_ddp(model, mesh["dp_replicate"])
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = build_optimizer(model, OptimizerSection(), case.device_type)
            autocast_dtype = mixed_precision_dtype(case.precision) if uses_autocast(dims) else None
            gen = torch.Generator().manual_seed(0)
            peaks = {}
            for step in range(2):
                if step == 1:
                    _reset_peak(tracker)
                for i in range(case.accumulation):
                    tokens = torch.randint(
                        0, case.shape.vocab_size, (case.micro_batch_size, case.seq_len + 1), generator=gen
                    )
                    x, y = tokens[:, :-1], tokens[:, 1:]
                    last = i == case.accumulation - 1
                    sync_ctx = nullcontext()
                    if hasattr(model, "set_requires_gradient_sync"):
                        model.set_requires_gradient_sync(last)
                    elif not last:
                        sync_ctx = model.no_sync()
                    with sync_ctx:
                        with torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype else nullcontext():
                            logits = model(x)
                        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten()) / case.accumulation
                        loss.backward()
                    tracker.reset_mod_stats()  # MemTracker refuses a second forward of a module otherwise
                peaks["forward_backward"] = _peak(tracker)
                with torch.no_grad():
                    clip_grad_norm(params, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                del logits, loss
            peaks["step"] = _peak(tracker)
        return peaks
    finally:
        dist.destroy_process_group()


def _peak(tracker) -> int:
    snap = tracker.get_tracker_snapshot("peak")
    return int(sum(s["Total"] for s in snap.values()))


def estimate(case: Case):
    return estimate_memory(
        case.shape,
        world_size=case.world_size,
        procs_per_node=case.world_size,
        data_parallel=case.data_parallel,
        sharding=case.sharding,
        tensor_parallel=1,
        precision=case.precision,
        micro_batch_size=case.micro_batch_size,
        seq_len=case.seq_len,
        activation_checkpointing=case.activation_checkpointing,
        gradient_accumulation_steps=case.accumulation,
        device_type=case.device_type,
    )


def compare(case: Case) -> dict:
    t0 = time.perf_counter()
    measured = measure(case)
    est = estimate(case)
    ref = measured["step"]
    return {
        "case": case.name,
        "estimate_bytes": est.allocated,
        "reference_bytes": ref,
        "error_pct": round(100.0 * (est.allocated - ref) / ref, 2),
        "estimate_phase": est.phase,
        "reference_fwd_bwd_bytes": measured["forward_backward"],
        "estimate": est.summary(),
        "config": {k: v for k, v in asdict(case).items() if k not in ("name", "extra")},
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", help="run only these cases (by name)")
    args = parser.parse_args()
    for case in GRID:
        if args.case and case.name not in args.case:
            continue
        print(json.dumps(compare(case), default=str), flush=True)


if __name__ == "__main__":
    main()
