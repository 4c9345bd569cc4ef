"""Next-token cross-entropy that never holds the whole batch's fp32 logits.

The plain loss, `cross_entropy(logits.float())`, keeps the logits, their fp32 copy, the fp32 log-softmax and, in
backward, two more fp32 tensors of the same (tokens x vocabulary) size: for llama-1b's batch (8 x 2048 tokens,
32 000 words) that is about 8 GiB, more than the model's weights, gradients and AdamW states together.

`linear_cross_entropy` fuses the output projection with the loss and walks the tokens a chunk at a time: for
each chunk it computes the logits, the loss and at once the gradient of the loss with respect to the logits,
turns that into the chunk's share of the hidden states' and projection weight's gradients, and drops the
chunk's logits. Forward keeps those two gradients (hidden-sized and weight-sized, in fp32, both far smaller than
the logits) and backward only scales them by the incoming gradient. The FLOPs are the plain loss's (one forward and
two backward matmuls per chunk): unlike checkpointing each chunk, nothing is recomputed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # F.cross_entropy's default: targets with this value count for nothing
LOGITS_PER_CHUNK = 1 << 26  # 64 Mi logits: 256 MiB in fp32 per chunk whatever the vocabulary
MIN_CHUNK_TOKENS = 128  # below this the output matmul gets too thin to run well on a GPU


def chunk_tokens_for(vocab_size: int) -> int:
    """Tokens per chunk: as many as fit LOGITS_PER_CHUNK logits (2097 for a 32k vocabulary, 523 for 128k)."""
    return max(MIN_CHUNK_TOKENS, LOGITS_PER_CHUNK // vocab_size)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean fp32 cross-entropy of (..., vocab) logits; the path for logits that cannot be cut into token chunks
    (tensor parallelism's vocabulary-sharded DTensor under loss_parallel)."""
    return F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), ignore_index=IGNORE_INDEX)


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int
) -> torch.Tensor:
    """Mean cross-entropy of the logits `hidden @ weight.T` (fp32 softmax) against targets, `chunk_tokens` tokens
    at a time; equal to `cross_entropy(F.linear(hidden, weight), targets)`, under autocast too."""
    return _LinearCrossEntropy.apply(hidden.flatten(0, -2), weight, targets.flatten(), chunk_tokens)


class _LinearCrossEntropy(torch.autograd.Function):
    """Loss in forward together with its gradients (see the module's docstring); backward scales them.

    The stored gradients are those of the *summed* loss, kept in fp32: per-token logit gradients (|g| <= 1) are
    safe in fp16, whereas dividing by the token count first would flush many to zero in fp16 before the loss scale
    could lift them. Backward multiplies by incoming gradient / count in fp32, then casts to the inputs' dtypes.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int):
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden, dtype=torch.float32) if want_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if want_weight else None
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk_tokens):
            rows = slice(start, start + chunk_tokens)
            logits = hidden[rows] @ weight.T  # the compute dtype: autocast's or the parameters'
            loss, grad_logits = _loss_and_logit_gradient(logits, targets[rows])
            total += loss
            grad_logits = grad_logits.to(logits.dtype)
            if want_hidden:
                grad_hidden[rows] = grad_logits @ weight
            if want_weight:
                grad_weight += grad_logits.T @ hidden[rows]
        count = (targets != IGNORE_INDEX).sum()
        ctx.save_for_backward(grad_hidden, grad_weight, count)
        ctx.dtypes = hidden.dtype, weight.dtype
        return total / count

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_hidden, grad_weight, count = ctx.saved_tensors
        scale = grad_loss.float() / count
        hidden_dtype, weight_dtype = ctx.dtypes
        hidden_part = None if grad_hidden is None else (grad_hidden * scale).to(hidden_dtype)
        weight_part = None if grad_weight is None else (grad_weight * scale).to(weight_dtype)
        return hidden_part, weight_part, None, None


def _loss_and_logit_gradient(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed fp32 cross-entropy of one chunk and its gradient with respect to the logits (softmax minus one-hot,
    zero for ignored targets). The softmax is built in place of the fp32 logits (no logsumexp temporary), so a
    chunk holds a single fp32 logits-sized buffer."""
    logits = logits.float()
    valid = targets != IGNORE_INDEX
    safe_targets = targets.where(valid, 0).unsqueeze(1)
    target_logits = logits.gather(1, safe_targets)
    row_max = logits.amax(dim=1, keepdim=True)
    grad = logits.sub_(row_max).exp_()
    row_sum = grad.sum(dim=1, keepdim=True)
    loss = ((row_max + row_sum.log() - target_logits).squeeze(1) * valid).sum()
    grad.div_(row_sum).scatter_add_(1, safe_targets, -valid.unsqueeze(1).to(grad.dtype))
    return loss, grad.mul_(valid.unsqueeze(1))
