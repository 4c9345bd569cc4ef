"""Next-token cross-entropy that never holds the whole batch's fp32 logits.

The plain loss, `cross_entropy(logits.float())`, keeps the logits, their fp32 copy, the fp32 log-softmax and, in
backward, two more fp32 tensors of the same (tokens x vocabulary) size: for llama-1b's batch (8 x 2048 tokens,
32 000 words) that is about 8 GiB, more than the model's weights, gradients and AdamW states together.
`chunked_cross_entropy` runs final norm -> output projection -> fp32 cross-entropy on a slice of tokens at a
time, each slice under activation checkpointing: forward keeps only the slices' inputs (a view of the hidden
states, which exist anyway) and backward recomputes one slice's logits at a time. The cost is one more forward
matmul of the output projection (a third of its FLOPs, about 2% of a llama-1b step).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100  # F.cross_entropy's default: targets with this value count for nothing
LOGITS_PER_CHUNK = 1 << 26  # 64 Mi logits: 256 MiB in fp32 per chunk whatever the vocabulary
MIN_CHUNK_TOKENS = 128  # below this the output matmul gets too thin to run well on a GPU


def chunk_tokens_for(vocab_size: int) -> int:
    """Tokens per chunk: as many as fit LOGITS_PER_CHUNK logits (2048 for a 32k vocabulary, 512 for 128k)."""
    return max(MIN_CHUNK_TOKENS, LOGITS_PER_CHUNK // vocab_size)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean fp32 cross-entropy of (..., vocab) logits; the path for logits that cannot be cut into token chunks
    (tensor parallelism's vocabulary-sharded DTensor under loss_parallel)."""
    return F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), ignore_index=IGNORE_INDEX)


def chunked_cross_entropy(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    chunk_tokens: int,
) -> torch.Tensor:
    """Mean cross-entropy of `head(hidden)` (the logits) against targets, `chunk_tokens` tokens at a time.

    Equal to `cross_entropy(head(hidden), targets)`; `head` maps (tokens, dim) hidden states to (tokens, vocab)
    logits and is re-run in backward, so it must be deterministic (norm and projection are).
    """
    flat_hidden, flat_targets = hidden.flatten(0, -2), targets.flatten()
    total = flat_hidden.new_zeros((), dtype=torch.float32)
    for hidden_chunk, target_chunk in zip(
        flat_hidden.split(chunk_tokens), flat_targets.split(chunk_tokens), strict=True
    ):
        total = total + _chunk_loss_sum(head, hidden_chunk, target_chunk)
    return total / (flat_targets != IGNORE_INDEX).sum()


def _chunk_loss_sum(
    head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Summed loss of one chunk; checkpointed when it will be backpropagated (nothing to save otherwise)."""
    if not torch.is_grad_enabled():
        return _summed_loss(head, hidden, targets)
    return checkpoint(_summed_loss, head, hidden, targets, use_reentrant=False, preserve_rng_state=False)


def _summed_loss(
    head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    logits = head(hidden).float()
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
