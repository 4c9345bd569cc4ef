"""The training loop: build, shard, materialise, resume, then step until done, diverged or told to stop."""

from __future__ import annotations

import math
import os
import signal
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import loss_parallel as loss_parallel_ctx

from .checkpoint import Checkpointer, latest_checkpoint, rng_state, set_rng_state
from .config import ConfigError, TrainerConfig
from .data import BatchSampler, load_tokens, tokenizer_vocab
from .exit_codes import EXIT_OK, write_termination_message
from .hf_checkpoint import fill_parameters
from .log import RunLog
from .metrics import Metrics, memory_stats, peak_flops
from .model import Transformer, flops_per_token, initial_value, resolve_model_args, validate_model_args
from .optim import build_optimizer, clip_grad_norm, lr_factor, set_lr
from .parallelize import (
    apply_ddp,
    build_mesh,
    check_model_fits,
    dp_coordinates,
    mixed_precision_dtype,
    parallel_dims,
    parallelize,
    uses_autocast,
)
from .precision import LossScaler

# We never modify the logits in place, which is what this FSDP2 warning is about.
warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")

EXIT_SIGTERM = 143  # 128 + SIGTERM: transient, so the operator restarts the pod and it resumes


class Diverged(RuntimeError):
    """The loss stayed non-finite for divergence_patience steps: retrying would replay the same divergence."""


@dataclass(frozen=True)
class Runtime:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    device: torch.device


def setup_distributed() -> Runtime:
    """Join torchrun's process group, or make a one-process group when run as plain `python -m`.

    Backend: $LLMTRAIN_BACKEND if set, else nccl when CUDA is available, else gloo (CPU).
    """
    backend = os.environ.get("LLMTRAIN_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend not in ("nccl", "gloo"):
        raise ConfigError(f"LLMTRAIN_BACKEND: {backend!r} is not 'nccl' or 'gloo'")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if "RANK" in os.environ:
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, **kwargs)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    world = dist.get_world_size()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    node_rank = int(os.environ.get("GROUP_RANK", str(dist.get_rank() // local_world)))
    return Runtime(dist.get_rank(), local_rank, world, local_world, node_rank, device)


class StopRequest:
    """SIGTERM sets a flag; the loop acts on it at the next step boundary, on every rank at the same step."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True


def _steps_from_env(name: str) -> set[int]:
    """Fault injection for tests: '3' or '3,7' or '3-9' -> the 1-based steps to inject at."""
    steps: set[int] = set()
    for part in filter(None, os.environ.get(name, "").split(",")):
        lo, _, hi = part.partition("-")
        steps.update(range(int(lo), int(hi or lo) + 1))
    return steps


def init_parameters(
    model: torch.nn.Module, shapes: dict[str, tuple[int, ...]], *, seed: int, n_layers: int, device: torch.device
) -> None:
    """Fill (possibly sharded) parameters with their full initial values, one parameter at a time: every rank
    computes the full value and copies its own shard, with no collective. Unlike set_model_state_dict (whose
    distribute_tensor asserts on _StridedShard), this works for uneven FSDP x TP layouts such as 3 x 2."""
    del shapes  # the parameters' own (global) shapes are the same
    fill_parameters(model, lambda name, shape: initial_value(name, shape, seed=seed, n_layers=n_layers, device=device))


def _memory_gib() -> float:
    stats = memory_stats()
    return round(stats.get("peak_allocated", stats["host_peak_rss"]) / 2**30, 2)


def train(cfg: TrainerConfig, rt: Runtime, stop: StopRequest) -> int:
    """Run to the end; return the exit code (0, or 143 after a SIGTERM save). Raises Diverged, ConfigError."""
    tc = cfg.training
    log = RunLog(job=cfg.job_name, rank=rt.rank, json_lines=cfg.logging.json_lines, enabled=rt.rank == 0)
    dims = parallel_dims(cfg.parallelism, world_size=rt.world_size, local_world_size=rt.local_world_size)
    vocab_needed = tokenizer_vocab(cfg.data)
    args = resolve_model_args(cfg.model, seq_len=cfg.data.seq_len, tokenizer_vocab=vocab_needed)
    problems = validate_model_args(args)
    if problems:
        raise ConfigError("; ".join(problems))
    check_model_fits(dims, args)
    if vocab_needed and vocab_needed > args.vocab_size:
        raise ConfigError(f"model.vocabSize: {args.vocab_size} is smaller than the tokenizer's {vocab_needed}")
    per_rank = tc.global_batch_size // dims.dp if tc.global_batch_size % dims.dp == 0 else 0
    if per_rank == 0 or per_rank % tc.micro_batch_size:
        raise ConfigError(
            f"training.globalBatchSize: {tc.global_batch_size} is not a multiple of training.microBatchSize "
            f"{tc.micro_batch_size} x {dims.dp} data-parallel ranks"
        )
    accum = per_rank // tc.micro_batch_size

    torch.manual_seed(tc.seed)
    mesh = build_mesh(dims, rt.device.type)
    dp_rank, dp_size = dp_coordinates(mesh)
    sampler = BatchSampler(
        load_tokens(cfg.data, vocab_size=args.vocab_size, seed=tc.seed),
        cfg.data.seq_len,
        tc.global_batch_size,
        dp_rank,
        dp_size,
        tc.seed,
    )

    with torch.device("meta"):
        model = Transformer(args)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    loss_parallel = cfg.parallelism.loss_parallel and dims.tp > 1
    parallelize(
        model,
        mesh,
        dims,
        precision=cfg.precision,
        ac=tc.activation_checkpointing,
        compile_blocks=tc.compile,
        loss_parallel=loss_parallel,
    )
    model.to_empty(device=rt.device)
    model.init_buffers(rt.device)
    init_parameters(model, shapes, seed=tc.seed, n_layers=args.n_layers, device=rt.device)
    if dims.data_parallel == "ddp" and dims.tp == 1:
        model = apply_ddp(model, mesh["dp_replicate"])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(model, cfg.optimizer, rt.device.type)
    scaler = LossScaler(enabled=cfg.precision == "fp16")
    autocast_dtype = mixed_precision_dtype(cfg.precision) if uses_autocast(dims) else None
    fpt = flops_per_token(args, cfg.data.seq_len)
    peak = peak_flops(
        torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else None, cfg.metrics.peak_flops
    )
    metrics = Metrics(
        job=cfg.job_name, node_rank=rt.node_rank, port=cfg.metrics.port, serve=rt.local_rank == 0, training=rt.rank == 0
    )

    step, tokens_total, bad_streak = 0, 0, 0
    ckpt = None
    if cfg.checkpoint.dir:
        ckpt = Checkpointer(
            cfg.checkpoint.dir,
            keep=cfg.checkpoint.keep,
            async_save=cfg.checkpoint.async_save,
            rank=rt.rank,
            log=log,
            model_args=args,  # model-args.json in each step: `python -m llmtrain_trainer export` reads it
        )
        state = ckpt.load_latest(model, optimizer)
        if state is not None:
            step, tokens_total = state["step"], state["tokens"]
            sampler.load_state_dict(state["data"])
            scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
            metrics.record_checkpoint(step, 0.0)

    def trainer_state() -> dict:
        return {
            "step": step,
            "tokens": tokens_total,
            "data": sampler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_state(),
        }

    log(
        "start",
        step=step,
        total_steps=tc.steps,
        world_size=rt.world_size,
        mesh=list(mesh.shape),
        parallelism=dims.data_parallel,
        sharding=dims.sharding,
        tp=dims.tp,
        precision=cfg.precision,
        grad_accum=accum,
        params=sum(p.numel() for p in params),
        flops_per_token=fpt,
        device=str(rt.device),
    )
    inject_inf_grad = _steps_from_env("LLMTRAIN_INJECT_INF_GRAD_STEPS")
    inject_nan_loss = _steps_from_env("LLMTRAIN_INJECT_NAN_LOSS_STEPS")
    tokens_per_step = tc.global_batch_size * cfg.data.seq_len
    window_tokens, window_start = 0, time.perf_counter()

    final_loss: float | None = None
    while step < tc.steps:
        t0 = time.perf_counter()
        lr = cfg.optimizer.lr * lr_factor(step, tc.steps, cfg.schedule)
        set_lr(optimizer, lr)
        inputs, targets = sampler.next_batch()
        inputs = torch.from_numpy(inputs).to(rt.device, non_blocking=True).split(tc.micro_batch_size)
        targets = torch.from_numpy(targets).to(rt.device, non_blocking=True).split(tc.micro_batch_size)
        loss_sum = torch.zeros((), device=rt.device)
        for i, (x, y) in enumerate(zip(inputs, targets, strict=True)):
            last = i == accum - 1
            sync_ctx = nullcontext()
            if hasattr(model, "set_requires_gradient_sync"):
                model.set_requires_gradient_sync(last)  # FSDP: reduce-scatter only on the last micro-batch
            elif not last:
                sync_ctx = model.no_sync()  # DDP: all-reduce only on the last micro-batch
            with sync_ctx, loss_parallel_ctx() if loss_parallel else nullcontext():
                with torch.autocast(rt.device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext():
                    logits = model(x)
                loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten()) / accum
                if step + 1 in inject_nan_loss:
                    loss = loss * float("nan")
                scaler.scale_loss(loss).backward()
            loss_sum += loss.detach().full_tensor() if isinstance(loss, DTensor) else loss.detach()
        with torch.no_grad():
            scaler.unscale_(params)
            if step + 1 in inject_inf_grad and rt.rank == 0:
                grad = params[0].grad
                (grad.to_local() if hasattr(grad, "to_local") else grad).view(-1)[0] = float("inf")
            grad_norm = clip_grad_norm(params, tc.grad_clip)
            # one all-reduce per step: loss, any rank's non-finite gradients, any rank's SIGTERM, async saves left
            flags = torch.stack(
                [
                    loss_sum.float(),
                    (~torch.isfinite(grad_norm)).float().to(rt.device),
                    torch.tensor(float(stop.requested), device=rt.device),
                    torch.tensor(float(ckpt is not None and not ckpt.local_done()), device=rt.device),
                ]
            )
            dist.all_reduce(flags)
            loss_avg, nonfinite, stopping, saving = flags.tolist()
        loss_avg /= rt.world_size
        final_loss = loss_avg
        skipped = nonfinite > 0
        if not skipped:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scaler.update(skipped)
        step += 1
        tokens_total += tokens_per_step
        seconds = time.perf_counter() - t0
        window_tokens += tokens_per_step

        bad_streak = bad_streak + 1 if not math.isfinite(loss_avg) else 0
        if skipped:
            log("step_skipped", step=step, loss=loss_avg, loss_scale=scaler.scale, skipped_total=scaler.skipped_steps)
        if bad_streak >= tc.divergence_patience:
            raise Diverged(f"loss was non-finite for {bad_streak} consecutive steps (last step {step})")

        norm_value = float(grad_norm)
        metrics.record_memory()
        metrics.record_step(
            step=step,
            total=tc.steps,
            loss=loss_avg,
            tokens=tokens_per_step,
            seconds=seconds,
            grad_norm=norm_value,
            lr=lr,
            loss_scale=scaler.scale,
            skipped=skipped,
            flops_per_token=fpt,
            peak=peak,
            world_size=rt.world_size,
        )
        if step % cfg.logging.interval == 0 or step == tc.steps:
            elapsed = time.perf_counter() - window_start
            tps = window_tokens / elapsed if elapsed > 0 else 0.0
            mfu = tps / rt.world_size * fpt / peak if peak else None
            metrics.record_memory()
            log(
                "step",
                step=step,
                loss=round(loss_avg, 6),
                lr=lr,
                grad_norm=round(norm_value, 6),
                tokens_per_s=round(tps, 1),
                step_s=round(seconds, 4),
                mfu=None if mfu is None else round(mfu, 4),
                flops_per_s=round(tps * fpt, 1),
                mem_gib=_memory_gib(),
                loss_scale=scaler.scale,
                skipped_total=scaler.skipped_steps,
            )
            window_tokens, window_start = 0, time.perf_counter()

        if ckpt is not None:
            if ckpt.pending is not None and saving == 0:
                _publish(ckpt, metrics)
            seconds = None
            if stopping and cfg.checkpoint.save_on_sigterm:
                seconds = ckpt.save(step, model, optimizer, trainer_state(), force_sync=True)
            elif step % cfg.checkpoint.interval == 0 or step == tc.steps:
                seconds = ckpt.save(step, model, optimizer, trainer_state())
            if seconds is not None:
                metrics.record_checkpoint(step, seconds)
        if stopping and step < tc.steps:  # a SIGTERM during the last step: that step is saved, so finish normally
            log("stopped", step=step, reason="SIGTERM")
            metrics.close()
            return EXIT_SIGTERM

    if ckpt is not None:
        _publish(ckpt, metrics)
    log("done", step=step, tokens=tokens_total, skipped_total=scaler.skipped_steps)
    if rt.rank == 0:
        write_termination_message(
            EXIT_OK,
            "training finished",
            step=step,
            totalSteps=tc.steps,
            loss=final_loss if final_loss is not None and math.isfinite(final_loss) else None,
            lastCheckpointStep=_newest_checkpoint_step(ckpt),
        )
    metrics.close()
    return EXIT_OK


def _newest_checkpoint_step(ckpt: Checkpointer | None) -> int | None:
    found = latest_checkpoint(ckpt.root) if ckpt is not None else None
    return found[0] if found else None


def _publish(ckpt: Checkpointer, metrics: Metrics) -> None:
    pending = ckpt.pending
    seconds = ckpt.finalize()
    if pending is not None and seconds is not None:
        metrics.record_checkpoint(pending.step, seconds)
