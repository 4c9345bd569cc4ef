"""One rank of the gradient-accumulation measurement, under torchrun (gloo, CPU) by test_trainer_accumulation.py.

    python accum_worker.py SPEC.json

It builds the tiny model in the layout exactly as the trainer does, runs the trainer's forward_backward over this
rank's share in two micro-batches (measuring the gradient bytes this rank holds between them), then over the same
share as one micro-batch; rank 0 writes the measurements and the largest gradient difference to spec["out"].
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from llmtrain_trainer.hf_checkpoint import fill_parameters
from llmtrain_trainer.model import ModelArgs, Transformer, initial_value
from llmtrain_trainer.parallelize import ParallelDims, build_mesh, parallelize
from llmtrain_trainer.precision import LossScaler
from llmtrain_trainer.step import StepPlan, forward_backward
from torch.distributed.tensor import DTensor

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, vocab_size=128, max_seq_len=32)
ROWS_PER_RANK, SEQ = 4, 16


def build(layout: dict) -> torch.nn.Module:
    dims = ParallelDims(layout["dp_replicate"], layout["dp_shard"], 1, "fsdp", layout["sharding"])
    with torch.device("meta"):
        model = Transformer(ARGS)
    parallelize(model, build_mesh(dims, "cpu"), dims, precision="fp32", ac="none", compile_blocks=False)
    model.to_empty(device="cpu")
    model.init_buffers(torch.device("cpu"))
    fill_parameters(model, lambda name, shape: initial_value(name, shape, seed=5, n_layers=ARGS.n_layers, device="cpu"))
    return model


def local_tensor(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def gradient_bytes(model: torch.nn.Module) -> int:
    """Every gradient byte this rank holds (each buffer once): the parameters' (sharded) grads and FSDP's
    unsharded gradient buffers."""
    held = [local_tensor(p.grad) for p in model.parameters()]
    for module in model.modules():
        state = module._get_fsdp_state() if hasattr(module, "_get_fsdp_state") else None
        group = state._fsdp_param_group if state is not None else None
        for fsdp_param in group.fsdp_params if group is not None else ():
            held.append(local_tensor(getattr(fsdp_param, "unsharded_accumulated_grad", None)))
            unsharded = getattr(fsdp_param, "_unsharded_param", None)
            held.append(local_tensor(unsharded.grad if unsharded is not None else None))
    buffers = {t.data_ptr(): t.numel() * t.element_size() for t in held if t is not None and t.numel()}
    return sum(buffers.values())


class MeasuredMicroBatches(list):
    """The micro-batches, measuring the gradient bytes when forward_backward moves on to the second one."""

    def __init__(self, items: list, model: torch.nn.Module) -> None:
        super().__init__(items)
        self.model, self.bytes_after_first = model, None

    def __iter__(self):
        for index, item in enumerate(list.__iter__(self)):
            if index == 1:
                self.bytes_after_first = gradient_bytes(self.model)
            yield item


def full_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    grads = {}
    for name, param in model.named_parameters():
        grads[name] = param.grad.full_tensor() if isinstance(param.grad, DTensor) else param.grad.clone()
    return grads


def share(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, ARGS.vocab_size, (2 * ROWS_PER_RANK, SEQ + 1), generator=torch.Generator().manual_seed(9))
    mine = tokens[rank * ROWS_PER_RANK : (rank + 1) * ROWS_PER_RANK]
    return mine[:, :-1], mine[:, 1:]


def run(model: torch.nn.Module, micro_batch: int, inputs: torch.Tensor, targets: torch.Tensor):
    micro_batches = list(zip(inputs.split(micro_batch), targets.split(micro_batch), strict=True))
    measured = MeasuredMicroBatches(micro_batches, model)
    plan = StepPlan(micro_batch, len(micro_batches), 0, grad_clip=0.0, autocast_dtype=None, loss_parallel=False)
    loss = forward_backward(model, measured, LossScaler(enabled=False), plan, poison_loss=False)
    dist.all_reduce(loss)
    return loss.item() / dist.get_world_size(), full_grads(model), measured.bytes_after_first


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = build(spec["layout"])
    full_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # global shapes
    inputs, targets = share(rank)
    loss_accum, grads_accum, bytes_after_first = run(model, ROWS_PER_RANK // 2, inputs, targets)
    model.zero_grad(set_to_none=True)
    loss_whole, grads_whole, _ = run(model, ROWS_PER_RANK, inputs, targets)
    diff = max((grads_accum[n] - grads_whole[n]).abs().max().item() for n in grads_whole)
    scale = max(g.abs().max().item() for g in grads_whole.values())
    measured = [None] * dist.get_world_size()
    dist.all_gather_object(measured, bytes_after_first)
    if rank == 0:
        result = {"full_bytes": full_bytes, "bytes_after_first": measured, "max_grad_diff": diff, "grad_scale": scale}
        result |= {"loss_accum": loss_accum, "loss_whole": loss_whole}
        Path(spec["out"]).write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
