"""One optimizer step: forward and backward over the micro-batches, unscale and clip, agree across ranks, update.

Gradient accumulation: each rank splits its share of the global batch into micro-batches and divides each
micro-batch's loss by their number (so the accumulated gradient is that of the whole share). FSDP reduce-scatters
every micro-batch's gradients, so they stay sharded (HSDP defers only the all-reduce across replicas to the last
one); DDP all-reduces once, after the last. Then a single all-reduce carries everything the ranks must agree on
(the loss, non-finite gradients, SIGTERM, unfinished async saves), so every rank skips, stops and publishes
checkpoints at the same step.

Nothing waits for the device on an ordinary step: the skip on non-finite gradients is taken on the device (fused
AdamW's found_inf), and the agreed values are copied to the host without waiting. They are read at once on
logging steps and the last step, otherwise one step later, when the copy is long done; the loop takes its
decisions (stop, publish a save, divergence) on what it has read, and every rank reads the same values at the
same step, so they still decide alike.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import loss_parallel

from .optim import clip_grad_norm, lr_factor, set_lr
from .precision import LossScaler
from .prefetch import MicroBatch
from .progress import should_log

if TYPE_CHECKING:
    from .build import Trainer
    from .checkpoint import Checkpointer

# We never modify the logits in place, which is what this FSDP2 warning is about.
warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")


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
    """A finished optimizer step as the host learns it, the same on every rank."""

    step: int  # the step these values are about (1-based)
    loss: float
    grad_norm: float  # global, before clipping
    lr: float
    skipped: bool  # non-finite gradients: the optimizer did not step
    stop_requested: bool
    checkpoint_writes_pending: bool
    seconds: float  # host time of the step (on CUDA: issuing its work, plus any wait for the device)
    loss_scale: float = 1.0  # after this step's update
    skipped_total: int = 0  # skipped steps so far, this one included
    pending_save_step: int | None = None  # the async save checkpoint_writes_pending is about (None: none)


@dataclass(frozen=True)
class StepResult:
    """What train_step returns: the number of steps done, and the outcomes the host has newly read, oldest first.

    A step's values are read at once on logging steps and the last step; otherwise one step late (the copy was
    queued without waiting), so `outcomes` holds none, one or two steps.
    """

    step: int  # steps done, counting this one
    outcomes: tuple[StepOutcome, ...]

    @property
    def latest(self) -> StepOutcome | None:
        return self.outcomes[-1] if self.outcomes else None


@dataclass
class PendingReadout:
    """One step's agreed values on their way to the host: the copy is queued, not waited for."""

    values: torch.Tensor  # host (pinned on CUDA): the 4 sums, then grad norm, loss scale, skipped steps
    copied: torch.cuda.Event | None  # None on CPU, where the copy is already done
    step: int
    lr: float
    pending_save_step: int | None
    seconds: float = 0.0

    def wait(self) -> None:
        """Wait for this step's copy only: later steps' work keeps running on the device."""
        if self.copied is not None:
            self.copied.synchronize()
            self.copied = None

    def read(self, world_size: int) -> StepOutcome:
        """The step's values, decoded (waits for the copy if it is not done)."""
        self.wait()
        loss_sum, nonfinite, stopping, writing, grad_norm, scale, skipped = self.values.tolist()
        agreed = RankAgreement.from_sums([loss_sum, nonfinite, stopping, writing], world_size)
        return StepOutcome(
            step=self.step,
            loss=agreed.loss,
            grad_norm=grad_norm,
            lr=self.lr,
            skipped=agreed.nonfinite_grads,
            stop_requested=agreed.stop_requested,
            checkpoint_writes_pending=agreed.checkpoint_writes_pending,
            seconds=self.seconds,
            loss_scale=scale,
            skipped_total=int(skipped),
            pending_save_step=self.pending_save_step,
        )


def train_step(trainer: Trainer) -> StepResult:
    """Train on the next global batch without waiting for the device; advances trainer.progress.

    The step's only collective sums what the ranks must agree on; the skip on non-finite gradients is taken on
    the device from that sum. Its values reach the host now on logging steps, else one step late.
    """
    started = time.perf_counter()
    cfg, plan, progress = trainer.cfg, trainer.plan, trainer.progress
    step = progress.step + 1
    lr = cfg.optimizer.lr * lr_factor(progress.step, cfg.training.steps, cfg.schedule)
    set_lr(trainer.optimizer, lr)
    batch = trainer.batches.next_batch()
    poison_loss = step in trainer.faults.nan_loss_steps
    loss_sum = forward_backward(trainer.model, batch, trainer.scaler, plan, poison_loss=poison_loss)
    with torch.no_grad():
        poison_grad = step in trainer.faults.inf_grad_steps and trainer.runtime.rank == 0
        grad_norm = unscale_and_clip(trainer.params, trainer.scaler, plan.grad_clip, poison_grad=poison_grad)
        checkpointer = trainer.checkpointer
        sums = all_reduce_flags(
            loss_sum,
            grad_norm,
            stop_requested=trainer.stop.requested,
            writing_checkpoint=checkpointer is not None and not checkpointer.local_done(),
        )
        if checkpointer is not None:
            checkpointer.wait_for_staging()  # an async save may still be copying the parameters we update
        apply_update(trainer.optimizer, trainer.scaler, (sums[1] > 0).float())
        readout = start_readout(sums, grad_norm, trainer.scaler, step=step, lr=lr, checkpointer=checkpointer)
    progress.advance(tokens=plan.tokens_per_step)
    read_now = should_log(step, interval=cfg.logging.interval, total_steps=cfg.training.steps)
    if read_now:
        readout.wait()  # a logging step's time includes the device finishing it, as its log line reports it
    readout.seconds = time.perf_counter() - started
    return StepResult(step, collect_outcomes(trainer, readout, read_now=read_now))


def collect_outcomes(trainer: Trainer, readout: PendingReadout, *, read_now: bool) -> tuple[StepOutcome, ...]:
    """The previous step's outcome (its copy is long done), and this step's too when it is read now."""
    world_size = trainer.runtime.world_size
    earlier = trainer.unread.read(world_size) if trainer.unread is not None else None
    trainer.unread = None if read_now else readout
    current = readout.read(world_size) if read_now else None
    return tuple(outcome for outcome in (earlier, current) if outcome is not None)


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
    """FSDP reduce-scatters every micro-batch, so accumulated gradients stay sharded (as torchtitan does); HSDP
    all-reduces across replicas once, on the last. DDP all-reduces once, on the last micro-batch."""
    if hasattr(model, "set_requires_all_reduce"):  # FSDP2
        model.set_requires_all_reduce(last_micro_batch)  # a no-op without a replicate dimension
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


def all_reduce_flags(
    loss_sum: torch.Tensor, grad_norm: torch.Tensor, *, stop_requested: bool, writing_checkpoint: bool
) -> torch.Tensor:
    """The step's one all-reduce (issued, not waited for): sums of the loss, of the ranks with non-finite
    gradients, with SIGTERM, with async saves left to write. RankAgreement decodes them."""
    device = loss_sum.device
    host_flags = torch.tensor([float(stop_requested), float(writing_checkpoint)])
    flags = torch.cat(
        [
            loss_sum.float().reshape(1),
            (~torch.isfinite(grad_norm)).float().to(device).reshape(1),
            host_flags.to(device, non_blocking=True),
        ]
    )
    dist.all_reduce(flags)
    return flags


def start_readout(
    sums: torch.Tensor,
    grad_norm: torch.Tensor,
    scaler: LossScaler,
    *,
    step: int,
    lr: float,
    checkpointer: Checkpointer | None,
) -> PendingReadout:
    """Queue the copy of the step's values to the host; PendingReadout.read waits for it when they are needed."""
    local = torch.stack([grad_norm.float(), scaler.scale_tensor.float(), scaler.skipped_tensor.float()])
    values = torch.cat([sums, local.to(sums.device)])
    copied = None
    if values.device.type == "cuda":
        host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
        host.copy_(values, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        values = host
    pending = checkpointer.pending if checkpointer is not None else None
    return PendingReadout(values, copied, step, lr, pending.step if pending is not None else None)


def apply_update(optimizer: torch.optim.Optimizer, scaler: LossScaler, found_nonfinite: torch.Tensor) -> None:
    """Step the optimizer, skipped on the device where `found_nonfinite` (a 0-d 0/1 float tensor) is 1: fused
    AdamW then leaves parameters, moments and its step count untouched. Either way clear the gradients and
    update the scale, with no host sync."""
    optimizer.found_inf = found_nonfinite  # read by fused optimizers' step, as GradScaler does
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf
    optimizer.zero_grad(set_to_none=True)
    scaler.update(found_nonfinite)
