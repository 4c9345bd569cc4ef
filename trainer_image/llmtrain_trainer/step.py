"""One optimizer step: forward and backward over the micro-batches, unscale and clip, agree across ranks, update.

Gradient accumulation: each rank splits its share of the global batch into micro-batches, divides each
micro-batch's loss by their number (so the accumulated gradient is that of the whole share) and synchronises
gradients only after the last one. Then a single all-reduce carries everything the ranks must agree on (the
loss, non-finite gradients, SIGTERM, unfinished async saves), so every rank skips, stops and publishes
checkpoints at the same step.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import loss_parallel

from .optim import clip_grad_norm, lr_factor, set_lr
from .precision import LossScaler

if TYPE_CHECKING:
    from .build import Trainer

# We never modify the logits in place, which is what this FSDP2 warning is about.
warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")

MicroBatch = tuple[torch.Tensor, torch.Tensor]  # (inputs, targets), each (micro_batch_size, seq_len)


@dataclass(frozen=True)
class StepPlan:
    """How every optimizer step of the run is computed."""

    micro_batch_size: int
    micro_batches: int  # per rank and step: gradient accumulation
    tokens_per_step: int  # the global batch's tokens, all ranks together
    grad_clip: float
    autocast_dtype: torch.dtype | None  # plain DDP casts with autocast; FSDP casts through its policy
    loss_parallel: bool  # TP keeps the logits sharded on the vocabulary: the loss runs under loss_parallel()


@dataclass(frozen=True)
class FaultInjection:
    """Faults the tests inject at 1-based steps, so skip and divergence handling run for real.

    $LLMTRAIN_INJECT_INF_GRAD_STEPS puts an inf into one gradient on rank 0 only (the other ranks' are clean);
    $LLMTRAIN_INJECT_NAN_LOSS_STEPS makes the loss NaN on every rank. Each is '3', '3,7' or '3-9'.
    """

    inf_grad_steps: frozenset[int] = frozenset()
    nan_loss_steps: frozenset[int] = frozenset()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> FaultInjection:
        return cls(
            inf_grad_steps=parse_steps(environ.get("LLMTRAIN_INJECT_INF_GRAD_STEPS", "")),
            nan_loss_steps=parse_steps(environ.get("LLMTRAIN_INJECT_NAN_LOSS_STEPS", "")),
        )


def parse_steps(spec: str) -> frozenset[int]:
    """'3' or '3,7' or '3-9' -> those 1-based steps; '' -> none."""
    steps: set[int] = set()
    for part in filter(None, spec.split(",")):
        first, _, last = part.partition("-")
        steps.update(range(int(first), int(last or first) + 1))
    return frozenset(steps)


@dataclass(frozen=True)
class RankAgreement:
    """What the ranks agree on after the step's all-reduce (which sums each rank's values)."""

    loss: float  # averaged over ranks
    nonfinite_grads: bool  # on any rank: the step is skipped everywhere
    stop_requested: bool  # any rank got SIGTERM
    checkpoint_writes_pending: bool  # any rank is still writing an async save: it cannot be published yet

    @classmethod
    def from_sums(cls, sums: list[float], world_size: int) -> RankAgreement:
        loss_sum, nonfinite, stopping, writing = sums
        return cls(loss_sum / world_size, nonfinite > 0, stopping > 0, writing > 0)


@dataclass(frozen=True)
class StepOutcome:
    """A finished optimizer step, the same on every rank."""

    step: int  # steps done, counting this one
    loss: float
    grad_norm: float  # global, before clipping
    lr: float
    skipped: bool  # non-finite gradients: the optimizer did not step
    stop_requested: bool
    checkpoint_writes_pending: bool
    seconds: float


def train_step(trainer: Trainer) -> StepOutcome:
    """Train on the next global batch; advances trainer.progress and returns what every rank agreed on."""
    started = time.perf_counter()
    cfg, plan, progress = trainer.cfg, trainer.plan, trainer.progress
    step = progress.step + 1
    lr = cfg.optimizer.lr * lr_factor(progress.step, cfg.training.steps, cfg.schedule)
    set_lr(trainer.optimizer, lr)
    batch = to_micro_batches(trainer.sampler.next_batch(), trainer.runtime.device, plan.micro_batch_size)
    poison_loss = step in trainer.faults.nan_loss_steps
    loss_sum = forward_backward(trainer.model, batch, trainer.scaler, plan, poison_loss=poison_loss)
    with torch.no_grad():
        poison_grad = step in trainer.faults.inf_grad_steps and trainer.runtime.rank == 0
        grad_norm = unscale_and_clip(trainer.params, trainer.scaler, plan.grad_clip, poison_grad=poison_grad)
        checkpointer = trainer.checkpointer
        agreed = agree_across_ranks(
            loss_sum,
            grad_norm,
            stop_requested=trainer.stop.requested,
            writing_checkpoint=checkpointer is not None and not checkpointer.local_done(),
            world_size=trainer.runtime.world_size,
        )
    apply_update(trainer.optimizer, trainer.scaler, skip=agreed.nonfinite_grads)
    progress.advance(tokens=plan.tokens_per_step, loss=agreed.loss)
    seconds = time.perf_counter() - started
    return StepOutcome(
        step=progress.step,
        loss=agreed.loss,
        grad_norm=float(grad_norm),  # read after the timing, as before: on CUDA it waits for the optimizer
        lr=lr,
        skipped=agreed.nonfinite_grads,
        stop_requested=agreed.stop_requested,
        checkpoint_writes_pending=agreed.checkpoint_writes_pending,
        seconds=seconds,
    )


def to_micro_batches(
    batch: tuple[np.ndarray, np.ndarray], device: torch.device, micro_batch_size: int
) -> list[MicroBatch]:
    """This rank's (inputs, targets) on the device, cut into micro-batches of `micro_batch_size` rows."""
    inputs, targets = (torch.from_numpy(rows).to(device, non_blocking=True).split(micro_batch_size) for rows in batch)
    return list(zip(inputs, targets, strict=True))


def forward_backward(
    model: nn.Module, micro_batches: list[MicroBatch], scaler: LossScaler, plan: StepPlan, *, poison_loss: bool
) -> torch.Tensor:
    """Accumulate the gradient of this rank's whole share; return its mean loss (a 0-d tensor).

    Each micro-batch's loss is divided by their number, so the sum of their gradients is the share's gradient.
    """
    count = len(micro_batches)
    loss_sum = torch.zeros((), device=micro_batches[0][0].device)
    for index, (inputs, targets) in enumerate(micro_batches):
        with gradient_sync(model, last_micro_batch=index == count - 1), loss_parallel_if(plan.loss_parallel):
            loss = micro_batch_loss(model, inputs, targets, plan.autocast_dtype) / count
            if poison_loss:
                loss = loss * float("nan")
            scaler.scale_loss(loss).backward()
        loss_sum += loss.detach().full_tensor() if isinstance(loss, DTensor) else loss.detach()
    return loss_sum


def micro_batch_loss(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, autocast_dtype: torch.dtype | None
) -> torch.Tensor:
    """Mean next-token cross-entropy; the model may run in low precision, the loss is always fp32.

    The model computes it from its last hidden states (Transformer.forward with targets), a slice of tokens at a
    time, so the whole micro-batch's fp32 logits never exist (loss.py).
    """
    with torch.autocast(inputs.device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext():
        return model(inputs, targets)


def gradient_sync(model: nn.Module, *, last_micro_batch: bool) -> AbstractContextManager:
    """Synchronise gradients once per step, on the last micro-batch: FSDP reduce-scatters, DDP all-reduces."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(last_micro_batch)
        return nullcontext()
    return nullcontext() if last_micro_batch else model.no_sync()  # DDP


def loss_parallel_if(enabled: bool) -> AbstractContextManager:
    """Cross-entropy (and its backward) on vocabulary-sharded logits, without gathering them."""
    return loss_parallel() if enabled else nullcontext()


def unscale_and_clip(
    params: list[nn.Parameter], scaler: LossScaler, grad_clip: float, *, poison_grad: bool
) -> torch.Tensor:
    """Undo the loss scale, then clip to `grad_clip`; returns the global norm before clipping."""
    scaler.unscale_(params)
    if poison_grad:
        grad = params[0].grad
        (grad.to_local() if hasattr(grad, "to_local") else grad).view(-1)[0] = float("inf")
    return clip_grad_norm(params, grad_clip)


def agree_across_ranks(
    loss_sum: torch.Tensor,
    grad_norm: torch.Tensor,
    *,
    stop_requested: bool,
    writing_checkpoint: bool,
    world_size: int,
) -> RankAgreement:
    """The step's one all-reduce: loss, any rank's non-finite gradients, any rank's SIGTERM, async saves left."""
    device = loss_sum.device
    flags = torch.stack(
        [
            loss_sum.float(),
            (~torch.isfinite(grad_norm)).float().to(device),
            torch.tensor(float(stop_requested), device=device),
            torch.tensor(float(writing_checkpoint), device=device),
        ]
    )
    dist.all_reduce(flags)
    return RankAgreement.from_sums(flags.tolist(), world_size)


def apply_update(optimizer: torch.optim.Optimizer, scaler: LossScaler, *, skip: bool) -> None:
    """Step the optimizer unless the gradients were non-finite; either way clear them and update the scale."""
    if not skip:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scaler.update(skip)
