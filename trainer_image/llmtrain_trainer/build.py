"""Build a run: check the config against the world, shard the model, materialise it, then resume if there is a
checkpoint.

The model is built on the meta device (no memory), `parallelize()` applies TP, activation checkpointing,
compile and FSDP in torchtitan's order, then each rank allocates only its shards and fills them with the full
initial values, so every layout starts from the same weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from .checkpoint import Checkpointer, rng_state, set_rng_state
from .config import ConfigError, TrainerConfig
from .data import BatchSampler, load_tokens, tokenizer_vocab
from .distributed import Runtime, StopRequest
from .evaluate import EvalSampler, eval_sampler_for
from .hf_checkpoint import fill_parameters
from .hf_job import import_init_weights, init_model_args
from .log import RunLog
from .memory_check import MemoryReport, run_estimate
from .metrics import Metrics, peak_flops
from .model import ModelArgs, Transformer, flops_per_token, initial_value, resolve_model_args, validate_model_args
from .optim import build_optimizer
from .parallelize import (
    ParallelDims,
    apply_ddp,
    build_mesh,
    check_model_fits,
    dp_coordinates,
    mixed_precision_dtype,
    parallel_dims,
    parallelize,
    resolve_compile,
    uses_autocast,
)
from .precision import LossScaler
from .prefetch import BatchPrefetcher
from .progress import Progress, ThroughputWindow, micro_batches_per_step
from .step import FaultInjection, PendingReadout, StepPlan


@dataclass
class Trainer:
    """Everything a built run holds. Only `progress` and `throughput` change from step to step (besides the
    model, optimizer, scaler and sampler states that checkpoints save)."""

    cfg: TrainerConfig
    runtime: Runtime
    stop: StopRequest
    log: RunLog
    dims: ParallelDims
    mesh: DeviceMesh
    plan: StepPlan
    model: nn.Module
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scaler: LossScaler
    sampler: BatchSampler
    batches: BatchPrefetcher  # the sampler's batches, prepared ahead on a thread
    flops_per_token: float
    peak_flops: float | None  # of one device; None where unknown (no MFU)
    metrics: Metrics
    checkpointer: Checkpointer | None  # None: checkpointing is off
    eval_sampler: EvalSampler | None = None  # None: no evaluation section
    memory: MemoryReport | None = None  # the preflight estimate, logged beside the measured peak
    faults: FaultInjection = field(default_factory=FaultInjection.from_env)
    progress: Progress = field(default_factory=Progress)
    throughput: ThroughputWindow = field(default_factory=lambda: ThroughputWindow(time.perf_counter()))
    unread: PendingReadout | None = None  # the previous step's values, still on their way to the host

    def state_dict(self) -> dict:
        """This rank's part of a checkpoint, beside the model and optimizer shards: what exact resume needs."""
        return {
            "step": self.progress.step,
            "tokens": self.progress.tokens,
            "data": self.sampler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.progress.step, self.progress.tokens = state["step"], state["tokens"]
        self.sampler.load_state_dict(state["data"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])


def build_trainer(cfg: TrainerConfig, runtime: Runtime, stop: StopRequest) -> Trainer:
    """Everything a run needs, checked first (ConfigError names the field), resumed from the newest checkpoint."""
    dims = parallel_dims(cfg.parallelism, world_size=runtime.world_size, local_world_size=runtime.local_world_size)
    args = checked_model_args(cfg, dims)
    plan = step_plan(cfg, dims)
    log = RunLog(job=cfg.job_name, rank=runtime.rank, json_lines=cfg.logging.json_lines, enabled=runtime.rank == 0)
    torch.manual_seed(cfg.training.seed)
    mesh = build_mesh(dims, runtime.device.type)
    sampler = build_sampler(cfg, mesh, vocab_size=args.vocab_size)
    dp_rank, dp_size = dp_coordinates(mesh)
    # the held-out data is opened and checked here, before the model is built, so bad data fails fast
    eval_sampler = eval_sampler_for(cfg, vocab_size=args.vocab_size, dp_rank=dp_rank, dp_size=dp_size)
    model = build_model(cfg, args, dims, mesh, runtime.device, loss_parallel=plan.loss_parallel)
    trainer = Trainer(
        cfg=cfg,
        runtime=runtime,
        stop=stop,
        log=log,
        dims=dims,
        mesh=mesh,
        plan=plan,
        model=model,
        params=[p for p in model.parameters() if p.requires_grad],
        optimizer=build_optimizer(model, cfg.optimizer, runtime.device.type),
        scaler=LossScaler(enabled=cfg.precision == "fp16", device=runtime.device),
        sampler=sampler,
        batches=BatchPrefetcher(sampler, runtime.device, plan.micro_batch_size),
        flops_per_token=flops_per_token(args, cfg.data.seq_len),
        peak_flops=device_peak_flops(runtime.device, cfg.metrics.peak_flops),
        metrics=build_metrics(cfg, runtime),
        checkpointer=build_checkpointer(cfg, runtime, log, args),
        eval_sampler=eval_sampler,
        memory=MemoryReport(run_estimate(cfg, args, dims, accum=plan.micro_batches, device_type=runtime.device.type)),
    )
    resumed = trainer.checkpointer is not None and resume_from_latest(trainer)
    if cfg.model.init is not None and not resumed:
        import_init_weights(trainer.model, cfg.model.init, log)  # step 0 only: a restart resumes our checkpoint
    return trainer


def checked_model_args(cfg: TrainerConfig, dims: ParallelDims) -> ModelArgs:
    """The model's shape from model.init's config.json, or from preset, fields and tokenizer; ConfigError when it
    cannot work on this mesh."""
    vocab_needed = tokenizer_vocab(cfg.data)
    if cfg.model.init is not None:
        args, vocab_field = init_model_args(cfg.model.init, seq_len=cfg.data.seq_len), "model.init: vocab_size"
    else:
        args = resolve_model_args(cfg.model, seq_len=cfg.data.seq_len, tokenizer_vocab=vocab_needed)
        vocab_field = "model.vocabSize:"
    problems = validate_model_args(args)
    if problems:
        raise ConfigError("; ".join(problems))
    check_model_fits(dims, args)
    if vocab_needed and vocab_needed > args.vocab_size:
        raise ConfigError(f"{vocab_field} {args.vocab_size} is smaller than the tokenizer's {vocab_needed}")
    return args


def step_plan(cfg: TrainerConfig, dims: ParallelDims) -> StepPlan:
    """How each step is computed on this mesh: accumulation, casting, where the loss runs."""
    training = cfg.training
    micro_batches = micro_batches_per_step(
        global_batch_size=training.global_batch_size,
        micro_batch_size=training.micro_batch_size,
        data_parallel_ranks=dims.dp,
    )
    return StepPlan(
        micro_batch_size=training.micro_batch_size,
        micro_batches=micro_batches,
        tokens_per_step=training.global_batch_size * cfg.data.seq_len,
        grad_clip=training.grad_clip,
        autocast_dtype=mixed_precision_dtype(cfg.precision) if uses_autocast(dims) else None,
        loss_parallel=cfg.parallelism.loss_parallel and dims.tp > 1,
    )


def build_sampler(cfg: TrainerConfig, mesh: DeviceMesh, *, vocab_size: int) -> BatchSampler:
    """The data: ranks of one TP group read the same rows, data-parallel ranks their own slice of the batch."""
    dp_rank, dp_size = dp_coordinates(mesh)
    seed = cfg.training.seed
    tokens = load_tokens(cfg.data, vocab_size=vocab_size, seed=seed)
    return BatchSampler(tokens, cfg.data.seq_len, cfg.training.global_batch_size, dp_rank, dp_size, seed)


def build_model(
    cfg: TrainerConfig,
    args: ModelArgs,
    dims: ParallelDims,
    mesh: DeviceMesh,
    device: torch.device,
    *,
    loss_parallel: bool,
) -> nn.Module:
    """Build on meta, parallelize, allocate this rank's shards and fill them; DDP wraps the result last."""
    with torch.device("meta"):
        model = Transformer(args)
    shapes = {name: tuple(param.shape) for name, param in model.named_parameters()}
    training = cfg.training
    parallelize(
        model,
        mesh,
        dims,
        precision=cfg.precision,
        ac=training.activation_checkpointing,
        compile_blocks=resolve_compile(training.compile, device.type),
        loss_parallel=loss_parallel,
    )
    model.to_empty(device=device)
    model.init_buffers(device)
    init_parameters(model, shapes, seed=training.seed, n_layers=args.n_layers, device=device)
    if dims.data_parallel == "ddp" and dims.tp == 1:
        model = apply_ddp(model, mesh["dp_replicate"])
    return model


def init_parameters(
    model: nn.Module, shapes: dict[str, tuple[int, ...]], *, seed: int, n_layers: int, device: torch.device
) -> None:
    """Fill (possibly sharded) parameters with their full initial values, one parameter at a time: every rank
    computes the full value and copies its own shard, with no collective. Unlike set_model_state_dict (whose
    distribute_tensor asserts on _StridedShard), this works for uneven FSDP x TP layouts such as 3 x 2."""
    del shapes  # the parameters' own (global) shapes are the same
    fill_parameters(model, lambda name, shape: initial_value(name, shape, seed=seed, n_layers=n_layers, device=device))


def device_peak_flops(device: torch.device, override: float | None) -> float | None:
    """Peak FLOP/s of this rank's device, for MFU: the configured value, else the GPU table's."""
    return peak_flops(torch.cuda.get_device_name(device) if device.type == "cuda" else None, override)


def build_metrics(cfg: TrainerConfig, runtime: Runtime) -> Metrics:
    """Each node's local rank 0 serves metrics; global rank 0 also exports the job's training metrics."""
    return Metrics(
        job=cfg.job_name,
        node_rank=runtime.node_rank,
        port=cfg.metrics.port,
        serve=runtime.local_rank == 0,
        training=runtime.rank == 0,
    )


def build_checkpointer(cfg: TrainerConfig, runtime: Runtime, log: RunLog, args: ModelArgs) -> Checkpointer | None:
    """None when checkpoint.dir is unset: the run then neither saves nor resumes. Each step directory gets
    model-args.json, which `python -m llmtrain_trainer export` reads."""
    checkpoint = cfg.checkpoint
    if not checkpoint.dir:
        return None
    return Checkpointer(
        checkpoint.dir,
        keep=checkpoint.keep,
        async_save=checkpoint.async_save,
        rank=runtime.rank,
        log=log,
        model_args=args,
        device_type=runtime.device.type,
    )


def resume_from_latest(trainer: Trainer) -> bool:
    """Load the newest complete checkpoint if there is one: model and optimizer shards, then this rank's state.
    False when there is none (a fresh start)."""
    state = trainer.checkpointer.load_latest(trainer.model, trainer.optimizer)
    if state is None:
        return False
    trainer.load_state_dict(state)
    trainer.metrics.record_checkpoint(trainer.progress.step, 0.0)
    return True
