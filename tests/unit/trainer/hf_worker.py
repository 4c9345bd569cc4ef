"""One process of a Hugging Face import/export scenario, run alone or under torchrun (gloo, CPU) by hf_runs.py.

    python hf_worker.py SCENARIO SPEC.json

SPEC holds the layout ({"dp_replicate", "dp_shard", "tp", "data_parallel", "sharding"}), the paths and the
batch; rank 0 writes its results (logits, numbers) under spec["out"] with torch.save.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from llmtrain_trainer import model as model_mod
from llmtrain_trainer.hf_checkpoint import fill_parameters, load_hf_model_args, load_hf_weights, save_hf_model
from llmtrain_trainer.model import ModelArgs, Transformer, initial_value, rope_table
from llmtrain_trainer.parallelize import ParallelDims, build_mesh, parallelize
from torch.distributed.tensor import DTensor


def setup() -> int:
    if "RANK" in os.environ:
        dist.init_process_group("gloo")
    else:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    return dist.get_rank()


def build(args: ModelArgs, layout: dict, *, precision: str = "fp32"):
    dims = ParallelDims(
        layout.get("dp_replicate", 1),
        layout.get("dp_shard", 1),
        layout.get("tp", 1),
        layout.get("data_parallel", "fsdp"),
        layout.get("sharding", "zero3"),
    )
    assert dims.world_size == dist.get_world_size(), (dims, dist.get_world_size())
    mesh = build_mesh(dims, "cpu")
    with torch.device("meta"):
        model = Transformer(args)
    ac, loss_parallel = layout.get("ac", "none"), layout.get("loss_parallel", False)
    parallelize(model, mesh, dims, precision=precision, ac=ac, compile_blocks=False, loss_parallel=loss_parallel)
    model.to_empty(device="cpu")
    model.init_buffers(torch.device("cpu"))
    if dims.data_parallel == "ddp" and dims.tp == 1:
        from llmtrain_trainer.parallelize import apply_ddp

        model = apply_ddp(model, mesh["dp_replicate"])
    return model


def full_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(tokens)
    return out.full_tensor() if isinstance(out, DTensor) else out


def init_by_value(model, args: ModelArgs, seed: int) -> None:
    fill_parameters(
        model, lambda name, shape: initial_value(name, shape, seed=seed, n_layers=args.n_layers, device="cpu")
    )


def scenario_import(spec: dict, rank: int) -> dict:
    """Import spec["hf"] into the layout; logits on spec["tokens"]."""
    args = load_hf_model_args(spec["hf"])
    model = build(args, spec["layout"])
    load_hf_weights(model, spec["hf"])
    return {"logits": full_logits(model, torch.tensor(spec["tokens"]))}


def scenario_export(spec: dict, rank: int) -> dict:
    """Initialise in the layout (or import spec["hf"]), export to spec["export"]; logits on spec["tokens"]."""
    args = load_hf_model_args(spec["hf"]) if spec.get("hf") else ModelArgs(**spec["args"])
    model = build(args, spec["layout"])
    if spec.get("hf"):
        load_hf_weights(model, spec["hf"])
    else:
        init_by_value(model, args, seed=spec.get("seed", 0))
    save_hf_model(
        model,
        spec["export"],
        dtype=getattr(torch, spec.get("dtype", "float32")),
        max_shard_bytes=spec.get("max_shard_bytes", 5 * 10**9),
        tokenizer=spec.get("tokenizer"),
    )
    return {"logits": full_logits(model, torch.tensor(spec["tokens"]))}


def scenario_init(spec: dict, rank: int) -> dict:
    """Initial values via fill_parameters (spec["via"] == "fill") or train.py's init_parameters; full params."""
    args = ModelArgs(**spec["args"])
    model = build(args, spec["layout"])
    if spec["via"] == "fill":
        init_by_value(model, args, seed=0)
    else:
        from llmtrain_trainer.train import init_parameters

        shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
        init_parameters(model, shapes, seed=0, n_layers=args.n_layers, device=torch.device("cpu"))
    # compare each rank's shards with the expected full values (no collective needed)
    from llmtrain_trainer.hf_checkpoint import local_shard, named_parameters

    worst = 0.0
    for name, p in named_parameters(model):
        full = initial_value(name, tuple(p.shape), seed=0, n_layers=args.n_layers, device="cpu")
        mine = p.to_local() if isinstance(p, DTensor) else p
        worst = max(worst, (mine - local_shard(full, p)).abs().max().item() if mine.numel() else 0.0)
    worst_t = torch.tensor(worst)
    dist.all_reduce(worst_t, op=dist.ReduceOp.MAX)
    return {"max_shard_error": worst_t.item(), "logits": full_logits(model, torch.tensor(spec["tokens"]))}


def scenario_rope(spec: dict, rank: int) -> dict:
    """The RoPE table each block's apply_rope sees under the layout and precision (bf16 for the FSDP bug)."""
    args = ModelArgs(**spec["args"])
    model = build(args, spec["layout"], precision=spec.get("precision", "bf16"))
    init_by_value(model, args, seed=0)
    seen = []
    original = model_mod.apply_rope

    def spy(x, rope):
        seen.append(rope.detach().clone())
        return original(x, rope)

    model_mod.apply_rope = spy
    try:
        full_logits(model, torch.tensor(spec["tokens"]))
    finally:
        model_mod.apply_rope = original
    reference = rope_table(args.head_dim, args.max_seq_len, args.rope_theta, scaling=args.rope_scaling)
    return {
        "dtypes": sorted({str(t.dtype) for t in seen}),
        "calls": len(seen),
        "max_error": max((t.float() - reference).abs().max().item() for t in seen),
    }


def scenario_loss(spec: dict, rank: int) -> dict:
    """The model's own training loss (chunks of spec["chunk_tokens"] where the layout allows) and backward;
    the loss and every parameter's full gradient."""
    from contextlib import nullcontext

    from llmtrain_trainer.hf_checkpoint import named_parameters
    from torch.distributed.tensor.parallel import loss_parallel

    args = ModelArgs(**spec["args"])
    model = build(args, spec["layout"])
    init_by_value(model, args, seed=0)
    transformer = getattr(model, "module", model)  # under DDP
    if transformer.loss_chunk_tokens:  # tensor parallelism switched chunking off
        transformer.loss_chunk_tokens = spec["chunk_tokens"]
    with loss_parallel() if spec["layout"].get("loss_parallel") else nullcontext():
        loss = model(torch.tensor(spec["inputs"]), torch.tensor(spec["targets"]))
        loss.backward()
    full = {
        name: p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad for name, p in named_parameters(model)
    }
    loss = loss.full_tensor() if isinstance(loss, DTensor) else loss
    return {"loss": loss.detach(), "grads": full, "chunk_tokens": transformer.loss_chunk_tokens}


def scenario_backward_collectives(spec: dict, rank: int) -> dict:
    """How many times each functional collective runs in backward (the layout's "ac" decides what is recomputed)."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    class Collectives(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.counts: Counter[str] = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.__name__.split(".")[0]
            if func.namespace == "_c10d_functional" and name != "wait_tensor" and not name.startswith("_"):
                self.counts[name] += 1  # the collectives themselves, not their helpers
            return func(*args, **(kwargs or {}))

    args = ModelArgs(**spec["args"])
    model = build(args, spec["layout"])
    init_by_value(model, args, seed=0)
    loss = model(torch.tensor(spec["inputs"]), torch.tensor(spec["targets"]))
    with Collectives() as seen:
        loss.backward()
    return {"counts": dict(seen.counts)}


def main() -> int:
    scenario, spec_path = sys.argv[1], sys.argv[2]
    spec = json.loads(Path(spec_path).read_text())
    torch.manual_seed(0)
    rank = setup()
    try:
        result = globals()[f"scenario_{scenario}"](spec, rank)
        if rank == 0:
            torch.save(result, Path(spec["out"]))
        # Every rank leaves together: a rank tearing gloo down while a peer still talks to it can abort
        # ("terminate called without an active exception"), seen with 6 processes on 2 busy cores.
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
