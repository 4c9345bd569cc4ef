"""The run's bookkeeping and the loop's decisions, as plain functions of numbers (no torch, no collectives).

Every rank evaluates them on the same all-reduced values, so every rank logs, saves and stops at the same step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from llmtrain_contract.rules import accumulation_steps, batch_problem, describe

from .config import ConfigError


@dataclass
class Progress:
    """Where the run stands: `step` and `tokens` go into checkpoints; the streak is what divergence is judged on."""

    step: int = 0  # optimizer steps done
    tokens: int = 0  # tokens trained on, all ranks together
    nonfinite_loss_streak: int = 0  # consecutive steps whose loss was NaN or inf
    last_loss: float | None = None
    last_eval_loss: float | None = None  # the latest validation loss (evaluation section), for the exit summary

    def advance(self, *, tokens: int) -> None:
        """Count one finished optimizer step that trained on `tokens`."""
        self.step += 1
        self.tokens += tokens

    def observe_loss(self, loss: float) -> None:
        """A step's (all-reduced) loss, once on the host: steps are observed in order, possibly one step late."""
        self.last_loss = loss
        self.nonfinite_loss_streak = 0 if math.isfinite(loss) else self.nonfinite_loss_streak + 1


@dataclass
class ThroughputWindow:
    """Tokens since the last log line and when that window began.

    The logged tokens/s divides by the window's wall time, so it counts everything between two log lines
    (data, metrics, checkpoints), not only the step itself.
    """

    started: float
    tokens: int = 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def rate(self, now: float) -> float:
        """Tokens per second since the window began (0 when no time has passed)."""
        elapsed = now - self.started
        return self.tokens / elapsed if elapsed > 0 else 0.0

    def restart(self, now: float) -> None:
        self.tokens, self.started = 0, now


class SaveReason(Enum):
    SIGTERM = "sigterm"  # the pod is being stopped: save synchronously, before exiting
    SCHEDULED = "scheduled"  # every checkpoint.interval steps, and the last step


def should_log(step: int, *, interval: int, total_steps: int) -> bool:
    """A log line every `interval` steps, and always one for the last step."""
    return step % interval == 0 or step == total_steps


def checkpoint_due(
    step: int, *, interval: int, total_steps: int, stop_requested: bool, save_on_sigterm: bool
) -> SaveReason | None:
    """Whether to save after `step`, and why; a SIGTERM save also covers a scheduled one at the same step."""
    if stop_requested and save_on_sigterm:
        return SaveReason.SIGTERM
    if step % interval == 0 or step == total_steps:
        return SaveReason.SCHEDULED
    return None


def exits_on_sigterm(step: int, *, total_steps: int, stop_requested: bool) -> bool:
    """Stop now (exit 143, the operator restarts the pod) unless the SIGTERM came during the last step:
    that step is done and saved, so the run finishes normally."""
    return stop_requested and step < total_steps


def has_diverged(nonfinite_loss_streak: int, *, patience: int) -> bool:
    """The loss stayed non-finite for `patience` steps: retrying would replay the same divergence."""
    return nonfinite_loss_streak >= patience


def micro_batches_per_step(*, global_batch_size: int, micro_batch_size: int, data_parallel_ranks: int) -> int:
    """How many micro-batches each data-parallel rank accumulates into one optimizer step.

    Raises ConfigError when the global batch does not split evenly into micro-batches on every rank.
    """
    problem = batch_problem(global_batch_size, micro_batch_size, data_parallel_ranks)
    if problem:
        raise ConfigError(describe([problem]))
    return accumulation_steps(global_batch_size, micro_batch_size, data_parallel_ranks)


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN: a non-finite value is reported as absent."""
    return value if value is not None and math.isfinite(value) else None
