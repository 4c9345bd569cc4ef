"""Validation loss: `evaluation: {source, interval, batches}`.

The held-out windows are fixed for the whole run (drawn from (seed, EVAL_STREAM, batch index), never from the
step), so successive evaluations measure the same tokens and their losses are comparable, before and after a
resume and whatever the number of ranks. Each data-parallel rank evaluates its slice of every global batch; the
mean loss is all-reduced like the training loss, and rank 0 exports it (`llmtrain_eval_loss`,
`llmtrain_eval_perplexity`), which the operator copies into `status.progress.evalLoss`.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np

from .config import TrainerConfig
from .data import BatchSampler, load_tokens

EVAL_STREAM = 0x6576616C  # "eval": keeps the held-out windows independent of the training draws


class EvalSampler(BatchSampler):
    """The same fixed `batches` global batches at every evaluation; this rank reads its contiguous slice."""

    def __init__(self, *args, batches: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = batches

    def locate(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.index.draw(np.random.default_rng([self.seed, EVAL_STREAM, step]), self.global_batch_size)

    def __iter__(self):
        """(inputs, targets) of each evaluation batch for this rank."""
        for i in range(self.batches):
            self.step = i
            yield self.next_batch()


def eval_sampler_for(cfg: TrainerConfig, *, vocab_size: int, dp_rank: int, dp_size: int) -> EvalSampler | None:
    """The evaluation data, checked now (a ConfigError names `evaluation.source` and the file); None when disabled."""
    if cfg.evaluation is None:
        return None
    data = cfg.data.model_copy(update={"source": cfg.evaluation.source, "sources": None})
    tokens = load_tokens(data, vocab_size=vocab_size, seed=cfg.training.seed, field_name="evaluation.source")
    return EvalSampler(
        tokens,
        cfg.data.seq_len,
        cfg.training.global_batch_size,
        dp_rank,
        dp_size,
        cfg.training.seed,
        batches=cfg.evaluation.batches,
    )


def eval_due(step: int, total_steps: int, cfg: TrainerConfig) -> bool:
    """Evaluate after every `evaluation.interval` steps and after the last one."""
    return cfg.evaluation is not None and (step % cfg.evaluation.interval == 0 or step == total_steps)


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


def evaluate(
    model,
    sampler: EvalSampler,
    *,
    device,
    micro_batch_size: int,
    world_size: int,
    autocast_dtype=None,
    loss_parallel: bool = False,
) -> tuple[float, float]:
    """Mean validation loss over the sampler's batches, averaged over all ranks, and its perplexity.

    Every rank must call this at the same step (it all-reduces once). The model is left in the mode it was in.
    """
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.parallel import loss_parallel as loss_parallel_ctx

    was_training = model.training
    model.eval()
    total = torch.zeros((), device=device, dtype=torch.float64)
    count = 0
    try:
        with torch.no_grad():
            for inputs, targets in sampler:
                xs = torch.from_numpy(inputs).to(device).split(micro_batch_size)
                ys = torch.from_numpy(targets).to(device).split(micro_batch_size)
                for x, y in zip(xs, ys, strict=True):
                    # the model's own loss: fp32 logits a slice of tokens at a time (loss.py)
                    cast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
                    with loss_parallel_ctx() if loss_parallel else nullcontext(), cast:
                        loss = model(x, y)
                    loss = loss.full_tensor() if isinstance(loss, DTensor) else loss
                    total += loss.detach().double()
                    count += 1
    finally:
        model.train(was_training)
    mean = total / count
    if dist.is_initialized():
        dist.all_reduce(mean)
        mean /= world_size
    value = float(mean)
    return value, perplexity(value)
