"""The training loop: build the run, then step until done, diverged or told to stop.

    trainer = build_trainer(...)        build.py: config checks, sharded model, optimizer, data, resume
    while steps remain:
        result = train_step(trainer)    step.py: forward/backward, clip, one all-reduce, optimizer update
        after_step(trainer, result)     here: divergence, metrics, the log line, checkpoints
        SIGTERM before the last step? the state is saved: exit 143
    finish(trainer)                     here: publish the last save, export (checkpoint.export), the termination message

Every decision (log? save? stop?) is taken on values all ranks agreed on, so all ranks take it at the same step.
Those values reach the host at once on logging steps and the last step, otherwise one step late (step.py): a
SIGTERM or a finished async save may thus be acted on one step later, by every rank alike.
"""

from __future__ import annotations

import time

from .build import Trainer, build_trainer
from .checkpoint import Checkpointer, latest_checkpoint
from .config import TrainerConfig
from .distributed import Runtime, StopRequest
from .evaluate import eval_due, evaluate
from .exit_codes import EXIT_OK, EXIT_SIGTERM, write_termination_message
from .hf_job import export_final_model
from .memory_check import measured_peak, memory_record
from .metrics import Metrics, memory_stats, mfu
from .progress import (
    SaveReason,
    checkpoint_due,
    exits_on_sigterm,
    finite_or_none,
    has_diverged,
    should_log,
)
from .step import StepOutcome, StepResult, train_step


class Diverged(RuntimeError):
    """The loss stayed non-finite for divergence_patience steps: retrying would replay the same divergence."""


def train(cfg: TrainerConfig, runtime: Runtime, stop: StopRequest) -> int:
    """Run to the end; return the exit code (0, or 143 after a SIGTERM save). Raises Diverged, ConfigError."""
    trainer = build_trainer(cfg, runtime, stop)
    try:
        return train_loop(trainer)
    finally:
        trainer.batches.close()
        if trainer.checkpointer is not None:
            trainer.checkpointer.close()


def train_loop(trainer: Trainer) -> int:
    """Step until done or told to stop; the exit code."""
    cfg = trainer.cfg
    log_start(trainer)
    trainer.throughput.restart(time.perf_counter())  # the first log line's tokens/s starts here, after resuming
    while trainer.progress.step < cfg.training.steps:
        result = train_step(trainer)
        after_step(trainer, result)
        if exits_on_sigterm(result.step, total_steps=cfg.training.steps, stop_requested=stop_requested(result)):
            return stop_on_sigterm(trainer)
    return finish(trainer)


def log_start(trainer: Trainer) -> None:
    """One line with the run's shape, so a log alone says what ran."""
    cfg, dims = trainer.cfg, trainer.dims
    trainer.log(
        "start",
        step=trainer.progress.step,
        total_steps=cfg.training.steps,
        world_size=trainer.runtime.world_size,
        mesh=list(trainer.mesh.shape),
        parallelism=dims.data_parallel,
        sharding=dims.sharding,
        tp=dims.tp,
        precision=cfg.precision,
        grad_accum=trainer.plan.micro_batches,
        params=sum(param.numel() for param in trainer.params),
        flops_per_token=trainer.flops_per_token,
        device=str(trainer.runtime.device),
    )


def stop_requested(result: StepResult) -> bool:
    """A SIGTERM reached some rank, as far as the values read so far tell (the same on every rank)."""
    return result.latest is not None and result.latest.stop_requested


def after_step(trainer: Trainer, result: StepResult) -> None:
    """Everything between two steps: per outcome read, divergence check, metrics and the log line when due; then
    evaluation and checkpoints when due."""
    trainer.throughput.add(trainer.plan.tokens_per_step)
    for outcome in result.outcomes:
        after_outcome(trainer, outcome)
    stopping = stop_requested(result)
    if not stopping and eval_due(result.step, trainer.cfg.training.steps, trainer.cfg):
        run_evaluation(trainer, result.step)
    log_memory(trainer, result.step)
    if trainer.checkpointer is not None:
        checkpoint_after_step(trainer, trainer.checkpointer, result)


def after_outcome(trainer: Trainer, outcome: StepOutcome) -> None:
    """A step's values, once on the host: the divergence streak, metrics, its log line when due."""
    trainer.progress.observe_loss(outcome.loss)
    check_divergence(trainer, outcome)
    record_step_metrics(trainer, outcome)
    if should_log(outcome.step, interval=trainer.cfg.logging.interval, total_steps=trainer.cfg.training.steps):
        log_step(trainer, outcome)


def log_memory(trainer: Trainer, step: int) -> None:
    """Once: the preflight estimate beside the measured peak (rank 0 logs; memory_check says at which step)."""
    report = trainer.memory
    if report is not None and report.due(step, trainer.cfg.training.steps):
        peak = measured_peak(trainer.runtime.device)
        trainer.log("memory", step=step, **memory_record(report.estimate, peak))


def check_divergence(trainer: Trainer, outcome: StepOutcome) -> None:
    """Log a skipped step; raise Diverged once the loss has been non-finite for divergence_patience steps."""
    if outcome.skipped:
        trainer.log(
            "step_skipped",
            step=outcome.step,
            loss=outcome.loss,
            loss_scale=outcome.loss_scale,
            skipped_total=outcome.skipped_total,
        )
    streak = trainer.progress.nonfinite_loss_streak
    if has_diverged(streak, patience=trainer.cfg.training.divergence_patience):
        raise Diverged(f"loss was non-finite for {streak} consecutive steps (last step {outcome.step})")


def run_evaluation(trainer: Trainer, step: int) -> None:
    """Validation loss on the fixed held-out windows (every rank, the same step), on rank 0's metrics and log."""
    assert trainer.eval_sampler is not None  # eval_due is False without an evaluation section
    loss, ppl = evaluate(
        trainer.model,
        trainer.eval_sampler,
        device=trainer.runtime.device,
        micro_batch_size=trainer.cfg.training.micro_batch_size,
        world_size=trainer.runtime.world_size,
        autocast_dtype=trainer.plan.autocast_dtype,
        loss_parallel=trainer.plan.loss_parallel,
    )
    trainer.progress.last_eval_loss = loss
    trainer.metrics.record_eval(step, loss, ppl)
    trainer.log("eval", step=step, loss=round(loss, 6), perplexity=round(ppl, 4))


def record_step_metrics(trainer: Trainer, outcome: StepOutcome) -> None:
    """Prometheus, every step (the step's own time; the log line's tokens/s covers its whole window)."""
    trainer.metrics.record_memory()
    trainer.metrics.record_step(
        step=outcome.step,
        total=trainer.cfg.training.steps,
        loss=outcome.loss,
        tokens=trainer.plan.tokens_per_step,
        seconds=outcome.seconds,
        grad_norm=outcome.grad_norm,
        lr=outcome.lr,
        loss_scale=outcome.loss_scale,
        skipped=outcome.skipped,
        flops_per_token=trainer.flops_per_token,
        peak=trainer.peak_flops,
        world_size=trainer.runtime.world_size,
    )


def log_step(trainer: Trainer, outcome: StepOutcome) -> None:
    """The `step` log line; its throughput covers every step since the previous line."""
    tokens_per_s = trainer.throughput.rate(time.perf_counter())
    utilisation = mfu(tokens_per_s / trainer.runtime.world_size, trainer.flops_per_token, trainer.peak_flops)
    trainer.metrics.record_memory()
    trainer.log(
        "step",
        step=outcome.step,
        loss=round(outcome.loss, 6),
        lr=outcome.lr,
        grad_norm=round(outcome.grad_norm, 6),
        tokens_per_s=round(tokens_per_s, 1),
        step_s=round(outcome.seconds, 4),
        mfu=None if utilisation is None else round(utilisation, 4),
        flops_per_s=round(tokens_per_s * trainer.flops_per_token, 1),
        mem_gib=memory_gib(),
        loss_scale=outcome.loss_scale,
        skipped_total=outcome.skipped_total,
    )
    trainer.throughput.restart(time.perf_counter())


def checkpoint_after_step(trainer: Trainer, checkpointer: Checkpointer, result: StepResult) -> None:
    """Publish an async save every rank has finished writing; save when SIGTERM or the schedule says so."""
    if writes_done(checkpointer, result.latest):
        publish_pending(checkpointer, trainer.metrics)
    reason = checkpoint_due(
        result.step,
        interval=trainer.cfg.checkpoint.interval,
        total_steps=trainer.cfg.training.steps,
        stop_requested=stop_requested(result),
        save_on_sigterm=trainer.cfg.checkpoint.save_on_sigterm,
    )
    if reason is None:
        return
    seconds = checkpointer.save(
        result.step, trainer.model, trainer.optimizer, trainer.state_dict(), force_sync=reason is SaveReason.SIGTERM
    )
    if seconds is not None:
        trainer.metrics.record_checkpoint(result.step, seconds)


def writes_done(checkpointer: Checkpointer, latest: StepOutcome | None) -> bool:
    """Every rank reported the pending async save written, in values read this step about that very save."""
    pending = checkpointer.pending
    if pending is None or latest is None or latest.pending_save_step != pending.step:
        return False
    return not latest.checkpoint_writes_pending


def stop_on_sigterm(trainer: Trainer) -> int:
    """The state is saved (unless checkpoint.saveOnSigterm is off): exit 143 so the pod restarts and resumes."""
    trainer.log("stopped", step=trainer.progress.step, reason="SIGTERM")
    trainer.metrics.close()
    return EXIT_SIGTERM


def finish(trainer: Trainer) -> int:
    """Publish the last save, export the model (checkpoint.export), log `done` and leave the operator a termination
    message (rank 0)."""
    progress, cfg = trainer.progress, trainer.cfg
    if trainer.checkpointer is not None:
        publish_pending(trainer.checkpointer, trainer.metrics)
    exported = export_final_model(trainer.model, cfg.checkpoint, cfg.data, cfg.precision, trainer.log)
    trainer.log("done", step=progress.step, tokens=progress.tokens, skipped_total=trainer.scaler.skipped_steps)
    if trainer.runtime.rank == 0:
        write_termination_message(
            EXIT_OK,
            "training finished",
            step=progress.step,
            totalSteps=trainer.cfg.training.steps,
            loss=finite_or_none(progress.last_loss),
            evalLoss=finite_or_none(progress.last_eval_loss),
            lastCheckpointStep=newest_checkpoint_step(trainer.checkpointer),
            export=None if exported is None else str(exported),
        )
    trainer.metrics.close()
    return EXIT_OK


def publish_pending(checkpointer: Checkpointer, metrics: Metrics) -> None:
    """Finish the pending async save (if any) and report how long it took."""
    pending = checkpointer.pending
    seconds = checkpointer.finalize()
    if pending is not None and seconds is not None:
        metrics.record_checkpoint(pending.step, seconds)


def newest_checkpoint_step(checkpointer: Checkpointer | None) -> int | None:
    found = latest_checkpoint(checkpointer.root) if checkpointer is not None else None
    return found[0] if found else None


def memory_gib() -> float:
    """Peak GPU memory allocated, or the host's peak RSS on CPU, in GiB."""
    stats = memory_stats()
    return round(stats.get("peak_allocated", stats["host_peak_rss"]) / 2**30, 2)
