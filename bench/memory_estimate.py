#!/usr/bin/env python3
"""The memory estimator (llmtrain_contract.memory) against measured per-rank peaks; prints one JSON line per case.

The reference runs the trainer's own code for two optimizer steps: `Transformer` built on meta, `parallelize`
(FSDP2 / AC exactly as the trainer applies them), `apply_ddp`, `build_optimizer`, and the loop body of train.py
(step.forward_backward's body: step.micro_batch_loss, i.e. `model(tokens, targets)` under autocast for plain DDP
(loss.py's fused chunked cross-entropy; under TP the vocabulary-sharded logits in loss_parallel), divided by the
accumulation steps, step.gradient_sync (DDP's no_sync; FSDP reduce-scatters every micro-batch)), clip_grad_norm,
step, zero_grad(set_to_none)). Memory
is measured by torch's `MemTracker` (torch.distributed._tools.mem_tracker), a TorchDispatchMode that follows every
tensor storage's allocation and release (including FSDP's `resize_` of unsharded parameters), so it measures live
tensor bytes: what the CUDA caching allocator calls "allocated", without the CUDA context or allocator
fragmentation. The peak of the second step is reported (the first creates the optimizer state; from the second on
every step repeats).

Small shapes run on real CPU tensors. With `fake` the same code runs under FakeTensorMode (no memory is touched), so
llama-1b-sized models and data-parallel degrees above 1 (a fake process group: rank 0 of N) can be measured on a
laptop; plain DDP cannot run under FakeTensorMode (`to_empty` cannot swap fake parameters into DDP), so those cases
are FSDP.

The measured peaks are recorded in bench/memory_reference.json (`--record`), so the estimator's fast unit tests
compare against them without measuring again (tests/unit/contract/test_memory_estimate.py).

Examples:
  python bench/memory_estimate.py                                   # the validation grid (~30 min on 2 CPU cores)
  python bench/memory_estimate.py --case tiny-ddp-fp32 --record     # one case, and update its recorded peak
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
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
    tensor_parallel: int = 1  # with loss parallelism, as the trainer's default
    fake: bool = False  # FakeTensorMode: no real memory; needed for big shapes and world_size > 1


def _shape(base: str, **kw) -> ModelShape:
    return ModelShape(**{**PRESETS[base].__dict__, **kw})


# tiny: 0.15 M parameters; SMALL 1.3 M with grouped-query attention; MID 17 M; M32 32 M with GQA; llama-1b 1.1 B
SMALL = _shape("tiny", dim=128, n_layers=4, n_heads=8, n_kv_heads=2, ffn_dim=384, vocab_size=2048)
MID = _shape("tiny", dim=384, n_layers=6, n_heads=6, n_kv_heads=6, ffn_dim=1024, vocab_size=8192, max_seq_len=512)
M32 = _shape("tiny", dim=512, n_layers=8, n_heads=8, n_kv_heads=4, ffn_dim=1408, vocab_size=8192, max_seq_len=512)

GRID: list[Case] = [
    Case("tiny-ddp-fp32", PRESETS["tiny"], data_parallel="ddp", precision="fp32"),
    Case("tiny-fsdp-bf16", PRESETS["tiny"]),
    Case("small-gqa-ddp-bf16", SMALL, data_parallel="ddp", micro_batch_size=4, seq_len=128),
    Case("small-gqa-fsdp-bf16-accum2", SMALL, micro_batch_size=4, seq_len=128, accumulation=2),
    Case("small-gqa-fsdp-fp32-full-ac", SMALL, precision="fp32", activation_checkpointing="full", seq_len=128),
    Case("mid-fsdp-bf16-mb4", MID, micro_batch_size=4, seq_len=256),
    Case("mid-fsdp-bf16-selective", MID, micro_batch_size=4, seq_len=256, activation_checkpointing="selective"),
    Case(
        "m32-ddp-bf16-full-ac",
        M32,
        data_parallel="ddp",
        micro_batch_size=2,
        seq_len=256,
        activation_checkpointing="full",
    ),
    Case("m32-fsdp-fp32-accum2", M32, precision="fp32", micro_batch_size=2, seq_len=256, accumulation=2),
    Case("small-gqa-tp2-fsdp-bf16-2ranks", SMALL, micro_batch_size=4, seq_len=128, world_size=2, tensor_parallel=2),
    Case("small-gqa-zero3-4ranks-fake", SMALL, micro_batch_size=4, seq_len=128, world_size=4, fake=True),
    Case(
        "small-gqa-zero3-4ranks-accum2-fake",
        SMALL,
        micro_batch_size=4,
        seq_len=128,
        world_size=4,
        accumulation=2,
        fake=True,
    ),
    Case("llama-1b-fsdp-bf16-fake", PRESETS["llama-1b"], micro_batch_size=1, seq_len=2048, fake=True),
    Case(
        "llama-1b-zero3-8ranks-fake",
        PRESETS["llama-1b"],
        micro_batch_size=2,
        seq_len=2048,
        world_size=8,
        fake=True,
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
    ),
]


def _reset_peak(tracker) -> None:
    """MemTracker has no public reset of its peak; the steady state starts at the second step."""
    current = tracker.get_tracker_snapshot("current")
    tracker._peak_mem = {dev: snap["Total"] for dev, snap in current.items()}
    tracker._peak_mem_snap = copy.deepcopy(current)


def measure(case: Case) -> dict:
    """Peak live tensor bytes of rank 0 in the second optimizer step of the trainer's code.

    One process for world size 1 and for fake runs (rank 0 of a fake process group); real multi-rank runs (tensor
    parallelism, which FakeTensorMode cannot run: its vocabulary masking has data-dependent shapes) start
    `world_size` gloo processes on this machine.
    """
    if case.world_size == 1 or case.fake:
        return _measure(case, rank=0, init_method=None)
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rank0.json"
        mp.spawn(_measure_rank, args=(case, f"file://{tmp}/store", str(out)), nprocs=case.world_size, join=True)
        return json.loads(out.read_text())


def _measure_rank(rank: int, case: Case, init_method: str, out: str) -> None:
    import torch

    torch.set_num_threads(1)
    peaks = _measure(case, rank=rank, init_method=init_method)
    if rank == 0:
        Path(out).write_text(json.dumps(peaks))


def _measure(case: Case, *, rank: int, init_method: str | None) -> dict:
    import torch
    import torch.distributed as dist
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
    from llmtrain_trainer.step import gradient_sync, loss_parallel_if, micro_batch_loss
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    if init_method:
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=case.world_size)
    elif case.world_size > 1:
        from torch.testing._internal.distributed.fake_pg import FakeStore

        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=case.world_size)
    else:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        w, tp = case.world_size, case.tensor_parallel
        if case.data_parallel == "ddp":
            dims = ParallelDims(w // tp, 1, tp, "ddp", case.sharding)
        else:
            dims = ParallelDims(1, w // tp, tp, "fsdp", case.sharding)
        loss_parallel = tp > 1
        mesh = build_mesh(dims, "cpu")
        cpu = torch.device("cpu")
        tracker = MemTracker()
        with FakeTensorMode(allow_non_fake_inputs=True) if case.fake else nullcontext(), tracker:
            with torch.device("meta"):
                model = Transformer(case.shape)
            parallelize(
                model,
                mesh,
                dims,
                precision=case.precision,
                ac=case.activation_checkpointing,
                compile_blocks=False,
                loss_parallel=loss_parallel,
            )
            model.to_empty(device=cpu)
            model.init_buffers(cpu)
            if not case.fake:
                with torch.no_grad():
                    for p in model.parameters():
                        p.normal_(0.0, 0.02)
            if dims.data_parallel == "ddp" and tp == 1:
                model = apply_ddp(model, mesh["dp_replicate"])
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = build_optimizer(model, OptimizerSection(), "cpu")  # fused AdamW, as on CUDA
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
                    # step.forward_backward's body: the model computes the loss (loss.py's fused chunked
                    # cross-entropy; the vocabulary-sharded logits under TP's loss_parallel)
                    sync_ctx = gradient_sync(model, last_micro_batch=i == case.accumulation - 1)
                    with sync_ctx, loss_parallel_if(loss_parallel):
                        loss = micro_batch_loss(model, x, y, autocast_dtype) / case.accumulation
                        loss.backward()
                    tracker.reset_mod_stats()  # MemTracker refuses a second forward of a module otherwise
                peaks["forward_backward"] = _peak(tracker)
                with torch.no_grad():
                    clip_grad_norm(params, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                del loss
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
        tensor_parallel=case.tensor_parallel,
        precision=case.precision,
        micro_batch_size=case.micro_batch_size,
        seq_len=case.seq_len,
        activation_checkpointing=case.activation_checkpointing,
        gradient_accumulation_steps=case.accumulation,
        device_type="cpu",  # the reference runs CPU kernels (composite RMSNorm, CPU flash attention)
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
        "config": {k: v for k, v in asdict(case).items() if k != "name"},
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", help="run only these cases (by name)")
    parser.add_argument("--record", action="store_true", help=f"store the measured peaks in {REFERENCE.name}")
    args = parser.parse_args()
    for case in GRID:
        if args.case and case.name not in args.case:
            continue
        result = compare(case)
        print(json.dumps(result, default=str), flush=True)
        if args.record:
            record_reference(case.name, result["reference_bytes"])


REFERENCE = Path(__file__).with_name("memory_reference.json")


def recorded_references() -> dict[str, int]:
    """Measured peak bytes per grid case, as last recorded."""
    return json.loads(REFERENCE.read_text())["peak_bytes"] if REFERENCE.exists() else {}


def record_reference(name: str, peak: int) -> None:
    import torch

    data = json.loads(REFERENCE.read_text()) if REFERENCE.exists() else {"peak_bytes": {}}
    data["torch"] = torch.__version__
    data["peak_bytes"][name] = peak
    data["peak_bytes"] = dict(sorted(data["peak_bytes"].items()))
    REFERENCE.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
