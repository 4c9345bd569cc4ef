"""Parallelism, applied to a model built on the meta device (torchtitan's order: TP, AC, compile, FSDP/DDP).

One DeviceMesh with dims (dp_replicate, dp_shard, tp):
- ddp:              dp_replicate = world / tp,   dp_shard = 1
- fsdp zero2/zero3: dp_replicate = 1,            dp_shard = world / tp
- fsdp hybrid:      dp_replicate = nodes,        dp_shard = ranks per node / tp (shard in a node, replicate across)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache

import torch
from llmtrain_contract.presets import tensor_parallel_dims
from llmtrain_contract.rules import describe, tensor_parallel_problems
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from .config import ConfigError, ParallelismConfig
from .model import ModelArgs, Transformer

MESH_DIMS = ("dp_replicate", "dp_shard", "tp")


@dataclass(frozen=True)
class ParallelDims:
    dp_replicate: int
    dp_shard: int
    tp: int
    data_parallel: str  # "ddp" | "fsdp"
    sharding: str  # "zero2" | "zero3" | "hybrid"

    @property
    def dp(self) -> int:
        return self.dp_replicate * self.dp_shard

    @property
    def world_size(self) -> int:
        return self.dp * self.tp


def parallel_dims(cfg: ParallelismConfig, *, world_size: int, local_world_size: int) -> ParallelDims:
    """Split the world into the mesh; raise ConfigError naming the field when it does not divide."""
    tp = cfg.tensor_parallel
    if world_size % tp:
        raise ConfigError(f"parallelism.tensorParallel: {tp} does not divide the world size {world_size}")
    if tp > local_world_size:
        raise ConfigError(f"parallelism.tensorParallel: {tp} exceeds the {local_world_size} ranks of a node")
    dp = world_size // tp
    sharding = cfg.effective_sharding  # unset: zero3 (the operator renders its choice; ranks never choose alone)
    if cfg.data_parallel == "ddp":
        return ParallelDims(dp, 1, tp, "ddp", sharding)
    if sharding == "hybrid":
        nodes = world_size // local_world_size
        if local_world_size % tp:
            raise ConfigError(f"parallelism.tensorParallel: {tp} does not divide {local_world_size} ranks per node")
        return ParallelDims(nodes, local_world_size // tp, tp, "fsdp", "hybrid")
    return ParallelDims(1, dp, tp, "fsdp", sharding)


def check_model_fits(dims: ParallelDims, args: ModelArgs) -> None:
    """Tensor parallelism splits heads, kv heads, the FFN and the vocabulary: each must divide evenly (the
    contract's rule, the one the operator checks before any pod)."""
    problems = tensor_parallel_problems(tensor_parallel_dims(asdict(args)), dims.tp)
    if problems:
        raise ConfigError(describe(problems))


def build_mesh(dims: ParallelDims, device_type: str) -> DeviceMesh:
    mesh = init_device_mesh(device_type, (dims.dp_replicate, dims.dp_shard, dims.tp), mesh_dim_names=MESH_DIMS)
    if dims.tp > 1:
        # gradient norms are partial over (dp_shard, tp); a flattened dim lets DTensor reduce them in one all-reduce
        mesh["dp_shard", "tp"]._flatten("dp_shard_tp")
    return mesh


def dp_coordinates(mesh: DeviceMesh) -> tuple[int, int]:
    """(dp_rank, dp_size): ranks in one TP group read the same data."""
    r, s = mesh["dp_replicate"], mesh["dp_shard"]
    return r.get_local_rank() * s.size() + s.get_local_rank(), r.size() * s.size()


def apply_tp(model: Transformer, tp_mesh: DeviceMesh, *, loss_parallel: bool) -> None:
    """Megatron-style TP with sequence parallelism: activations between blocks are sharded on the sequence.

    With loss_parallel the logits stay sharded on the vocabulary (a DTensor) and the loss must be computed and
    backpropagated inside `torch.distributed.tensor.parallel.loss_parallel()`.
    """
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    parallelize_module(
        model,
        tp_mesh,
        {
            "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
            "norm": SequenceParallel(),
            "output": ColwiseParallel(
                input_layouts=Shard(1),
                output_layouts=Shard(-1) if loss_parallel else Replicate(),
                use_local_output=not loss_parallel,
            ),
        },
    )
    for block in model.layers.values():
        parallelize_module(
            block,
            tp_mesh,
            {
                "attention_norm": SequenceParallel(),
                # the RoPE table is the attention module's buffer (kept fp32), not an input
                "attention": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
                "attention.wq": ColwiseParallel(),
                "attention.wk": ColwiseParallel(),
                "attention.wv": ColwiseParallel(),
                "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
                "ffn_norm": SequenceParallel(),
                "feed_forward": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
                "feed_forward.w1": ColwiseParallel(),
                "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
                "feed_forward.w3": ColwiseParallel(),
            },
        )
    if model.args.tie_embeddings:  # parallelize_module made two parameters out of one; both are Shard(0)
        model.output.weight = model.tok_embeddings.weight
    # the hidden states are sequence shards here: the loss cannot slice them by tokens; loss_parallel keeps its
    # logits vocabulary-sharded instead (1/tp of them per rank)
    model.loss_chunk_tokens = 0


@cache
def _always_saved_ops() -> frozenset:
    """Ops whose outputs selective checkpointing keeps: attention (the costliest op to recompute, O(seq^2)) and
    tensor parallelism's collectives (recomputing them would repeat the communication in backward)."""
    aten, c10d = torch.ops.aten, torch.ops._c10d_functional
    return frozenset(
        {
            aten._scaled_dot_product_flash_attention.default,
            aten._scaled_dot_product_efficient_attention.default,
            aten._scaled_dot_product_cudnn_attention.default,
            aten._scaled_dot_product_flash_attention_for_cpu.default,
            c10d.all_gather_into_tensor.default,
            c10d.reduce_scatter_tensor.default,
            c10d.all_reduce.default,
            c10d.all_to_all_single.default,
            c10d.wait_tensor.default,
        }
    )


class SelectivePolicy:
    """Which op outputs one checkpointed block keeps: attention, collectives, and every other matmul (the 1st,
    3rd, ... of the block: wq, wv, w1, w2 of its 7); the other matmuls and all elementwise work are recomputed.

    Saving half the matmuls halves what the matmuls would keep while backward recomputes only 3 of 7 (each
    from inputs that are saved or cheap). Matmuls are counted separately in forward and in the recompute, which
    see the same ops in the same order, so both make the same decision for each. One instance per block call.
    """

    def __init__(self) -> None:
        self.saved_ops = _always_saved_ops()
        self.matmuls = {False: 0, True: 0}  # by ctx.is_recompute

    def __call__(self, ctx, op, *args, **kwargs):
        from torch.utils.checkpoint import CheckpointPolicy

        if op in self.saved_ops:
            return CheckpointPolicy.MUST_SAVE
        if op is torch.ops.aten.mm.default:
            self.matmuls[ctx.is_recompute] += 1
            if self.matmuls[ctx.is_recompute] % 2 == 1:
                return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE


def selective_checkpoint_contexts():
    """A fresh policy (fresh matmul counts) for each checkpointed call."""
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(SelectivePolicy())


def apply_activation_checkpointing(model: Transformer, mode: str) -> None:
    """'full' recomputes each block in backward; 'selective' only part of it (SelectivePolicy)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for name, block in list(model.layers.items()):
        if mode == "full":
            wrapped = checkpoint_wrapper(block, preserve_rng_state=False)
        else:
            wrapped = checkpoint_wrapper(block, context_fn=selective_checkpoint_contexts, preserve_rng_state=False)
        model.layers[name] = wrapped


def resolve_compile(setting: bool | None, device_type: str) -> bool:
    """`training.compile` for this device: unset means on for CUDA (per-block graphs fuse the norms, RoPE and
    SwiGLU's elementwise work), off elsewhere (on CPU compiling takes longer than the small runs it would speed)."""
    return device_type == "cuda" if setting is None else setting


def apply_compile(model: Transformer) -> None:
    """Compile block by block: every block has the same graph, so it compiles once and is reused.

    Blocks are wrapped before fully_shard, so FSDP's hooks stay outside the compiled graphs. State-dict names
    are unchanged: DCP's state-dict helpers drop the wrapper's `_orig_mod` prefix.
    """
    for name, block in list(model.layers.items()):
        model.layers[name] = torch.compile(block, fullgraph=True)


def mixed_precision_dtype(precision: str) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def apply_fsdp(model: Transformer, dp_mesh: DeviceMesh, *, precision: str, reshard_after_forward: bool) -> None:
    """FSDP2 per block, then the root (embeddings, final norm, output).

    Parameters are kept in fp32 (the optimizer's master copy) and gathered in bf16/fp16 for compute;
    gradients are reduced in fp32. ZeRO-2 keeps the gathered parameters from forward to backward.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dtype = mixed_precision_dtype(precision)
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype else MixedPrecisionPolicy()
    blocks = list(model.layers.values())
    for i, block in enumerate(blocks):
        # the last block's parameters are needed again at once by backward: never reshard them
        reshard = reshard_after_forward and i < len(blocks) - 1
        fully_shard(block, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard)
    fully_shard(model, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)


def apply_ddp(model: nn.Module, dp_mesh: DeviceMesh) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [torch.cuda.current_device()] if dp_mesh.device_type == "cuda" else None
    return DistributedDataParallel(model, process_group=dp_mesh.get_group(), device_ids=device_ids)


def parallelize(
    model: Transformer,
    mesh: DeviceMesh,
    dims: ParallelDims,
    *,
    precision: str,
    ac: str,
    compile_blocks: bool,
    loss_parallel: bool = False,
) -> nn.Module:
    """Apply everything in order; the model is still on the meta device afterwards (DDP wraps it later)."""
    if dims.tp > 1:
        apply_tp(model, mesh["tp"], loss_parallel=loss_parallel)
    if ac != "none":
        apply_activation_checkpointing(model, ac)
    if compile_blocks:
        apply_compile(model)
    if dims.data_parallel == "fsdp":
        dp_mesh = mesh["dp_replicate", "dp_shard"] if dims.sharding == "hybrid" else mesh["dp_shard"]
        apply_fsdp(model, dp_mesh, precision=precision, reshard_after_forward=dims.sharding != "zero2")
    elif dims.tp > 1:
        # DDP does not compose with DTensor parameters; FSDP2 over (replicate, shard of size 1) is DDP semantics:
        # full parameters on every data-parallel rank and an all-reduce of gradients.
        apply_fsdp(model, mesh["dp_replicate", "dp_shard"], precision=precision, reshard_after_forward=False)
    return model


def uses_autocast(dims: ParallelDims) -> bool:
    """Plain DDP casts via autocast; every FSDP-wrapped model casts via its MixedPrecisionPolicy."""
    return dims.data_parallel == "ddp" and dims.tp == 1
