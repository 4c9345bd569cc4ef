"""A Hugging Face `TrainerCallback` that reports progress the llmtrain way (needs `transformers`).

    from llmtrain_trainer.hf import LLMTrainCallback
    trainer = Trainer(..., callbacks=[LLMTrainCallback(tokens_per_step=global_batch * seq_len)])

Every rank runs callbacks; only global rank 0 serves the metrics (llmtrain_trainer.report). The loss is the
Trainer's logged loss (every `logging_steps`), checkpoints are the Trainer's saves, the total is `max_steps`.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from .report import Reporter


class LLMTrainCallback(TrainerCallback):
    def __init__(self, tokens_per_step: int | None = None, reporter: Reporter | None = None) -> None:
        """`tokens_per_step`: tokens the whole job trains on per optimizer step (for tokens/s); the Trainer's
        `num_input_tokens_seen` is used instead when `include_num_input_tokens_seen` is on."""
        self.tokens_per_step = tokens_per_step
        self.reporter = reporter or Reporter()
        self._loss: float | None = None
        self._tokens_seen = 0

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self._loss = float(logs["loss"])  # logged after on_step_end of the same step
            self.reporter.update(loss=self._loss, total_steps=state.max_steps)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        tokens: float | None = self.tokens_per_step
        seen = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        if seen:
            tokens, self._tokens_seen = seen - self._tokens_seen, seen
        self.reporter.report(step=state.global_step, loss=self._loss, tokens=tokens, total_steps=state.max_steps)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.reporter.checkpoint_saved(state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.reporter.done()
