"""A Llama-style decoder-only transformer: RMSNorm, RoPE, SwiGLU, grouped-query attention.

The model knows nothing about parallelism. It is built on the meta device (no memory), sharded by
parallelize.py, then materialised with `to_empty` and filled by `initial_value`, which gives every
parameter the same full value whatever the sharding, so runs with different layouts start identical.
"""

from __future__ import annotations

import math
import zlib

import torch
import torch.nn.functional as F
from llmtrain_contract.presets import ModelShape, RopeScaling, resolve_shape
from llmtrain_contract.rules import shape_problems
from torch import nn

from .config import ModelConfig
from .loss import chunk_tokens_for, cross_entropy, linear_cross_entropy

# The shape is the contract's (the operator checks it too); the model only builds it.
ModelArgs = ModelShape
__all__ = ["ModelArgs", "RopeScaling"]


def resolve_model_args(cfg: ModelConfig, *, seq_len: int, tokenizer_vocab: int | None) -> ModelArgs:
    """Preset first, explicit fields override; vocab falls back to the tokenizer's, context to the data's."""
    return resolve_shape(cfg, seq_len=seq_len, tokenizer_vocab=tokenizer_vocab)


def validate_model_args(args: ModelArgs) -> list[str]:
    """Shape problems as 'field: reason' lines (empty when fine)."""
    return [f"{field}: {message}" for field, message in shape_problems(args)]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_table(
    head_dim: int,
    max_seq_len: int,
    theta: float,
    device: torch.device | None = None,
    scaling: RopeScaling | None = None,
) -> torch.Tensor:
    """(max_seq_len, head_dim/2, 2) fp32 table of cos and sin of each position's rotation angles."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    if scaling is not None:
        inv_freq = _llama3_scaled(inv_freq, scaling)
    angles = torch.outer(torch.arange(max_seq_len, device=device, dtype=torch.float32), inv_freq)
    return torch.stack((angles.cos(), angles.sin()), dim=-1)


def _llama3_scaled(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    """Llama 3.1's scaling of the inverse frequencies (the same formula as transformers' "llama3" rope_type)."""
    low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return torch.where(medium, smoothed, scaled)


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of channels of x (batch, seq, heads, head_dim) by position-dependent angles."""
    seq = x.shape[1]
    cos = rope[:seq, :, 0].view(1, seq, 1, -1)
    sin = rope[:seq, :, 1].view(1, seq, 1, -1)
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.type_as(x)


def _rope_for(args: ModelArgs, device: torch.device | None = None) -> torch.Tensor:
    return rope_table(args.head_dim, args.max_seq_len, args.rope_theta, device=device, scaling=args.rope_scaling)


class Attention(nn.Module):
    """Self-attention. The RoPE table is a non-persistent buffer of this module, not a forward argument: FSDP2's
    MixedPrecisionPolicy casts floating-point forward inputs to bf16/fp16 (cos/sin errors up to ~2e-3) but never
    buffers, so the table stays fp32 under every layout. Every block shares one tensor (see init_buffers)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.head_dim = args.head_dim
        self.register_buffer("rope", _rope_for(args), persistent=False)
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, seq, _ = x.shape
        # -1 heads: under tensor parallelism each rank holds only its share of the heads.
        q = self.wq(x).view(bsz, seq, -1, self.head_dim)
        k = self.wk(x).view(bsz, seq, -1, self.head_dim)
        v = self.wv(x).view(bsz, seq, -1, self.head_dim)
        q, k = apply_rope(q, self.rope), apply_rope(k, self.rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        out = attend(q, k, v)
        return self.wo(out.transpose(1, 2).reshape(bsz, seq, -1))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of (batch, heads, seq, head_dim) q over k and v, which may have fewer (kv) heads.

    Grouped-query attention goes to SDPA as is (`enable_gqa`): the CPU and CUDA flash kernels (and CUDA's
    efficient one) read each kv head for its group of query heads, so no repeated K/V copies are made or saved for
    backward; SDPA falls back to its math kernel by itself where a backend cannot. Under tensor parallelism q, k
    and v are this rank's local heads (plain tensors), so the same call serves every layout.
    """
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.w1 = nn.Linear(args.dim, args.ffn_dim, bias=False)
        self.w2 = nn.Linear(args.ffn_dim, args.dim, bias=False)
        self.w3 = nn.Linear(args.dim, args.ffn_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        # A ModuleDict keeps parameter names stable ("layers.3.…") whatever wrappers are applied to blocks.
        self.layers = nn.ModuleDict({str(i): Block(args) for i in range(args.n_layers)})
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        # tokens per slice of the loss's logits (loss.py); 0: all at once, for activations that cannot be cut into
        # token slices (tensor parallelism's sequence shards: parallelize sets it)
        self.loss_chunk_tokens = chunk_tokens_for(args.vocab_size)
        self.init_buffers(None)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """The logits of every position, or with `targets` the mean next-token cross-entropy (fp32).

        The loss is computed here, not by the caller on returned logits, so that the full fp32 logits never exist
        (loss.py fuses the output projection with it) and so that FSDP's hooks on this module gather the output
        projection for it.
        """
        h = self.tok_embeddings(tokens)
        for block in self.layers.values():
            h = block(h)
        if targets is None:
            return self.logits(h)
        if self.loss_chunk_tokens <= 0:
            return cross_entropy(self.logits(h), targets)
        return linear_cross_entropy(self.norm(h), self.output.weight, targets, self.loss_chunk_tokens)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and output projection of the last block's hidden states."""
        return self.output(self.norm(hidden))

    def init_buffers(self, device: torch.device | None) -> None:
        """(Re)compute the fp32 RoPE table, e.g. after `to_empty` left it uninitialised; one tensor for all blocks.

        Works through wrappers (activation checkpointing, torch.compile): it finds every Attention module.
        """
        table = _rope_for(self.args, device)
        for module in self.modules():
            if isinstance(module, Attention):
                module.rope = table

    @property
    def rope(self) -> torch.Tensor:
        """The shared RoPE table (every block's `attention.rope`)."""
        return next(m.rope for m in self.modules() if isinstance(m, Attention))

    def init_weights(self, seed: int) -> None:
        """Initialise in place (single-device use); sharded models use `initial_value` per full parameter."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(initial_value(name, tuple(p.shape), seed=seed, n_layers=self.args.n_layers, device=p.device))


def initial_value(name: str, shape: tuple[int, ...], *, seed: int, n_layers: int, device: torch.device) -> torch.Tensor:
    """The full initial value of one parameter, a function of its name and the seed only.

    Norm gains start at 1; matrices N(0, 0.02), with the projections that write into the residual stream
    (wo, w2) scaled by 1/sqrt(2 x layers) as in GPT-2, so the residual's variance does not grow with depth.
    """
    if name.endswith("norm.weight"):
        return torch.ones(shape, device=device)
    std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("wo.weight", "w2.weight")) else 0.02
    gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    return torch.empty(shape, device=device).normal_(0.0, std, generator=gen)


def count_params(args: ModelArgs) -> tuple[int, int]:
    """(total, non-embedding) parameter counts, computed from the shape alone."""
    d, f, hd = args.dim, args.ffn_dim, args.head_dim
    attn = d * args.n_heads * hd * 2 + d * args.n_kv_heads * hd * 2
    block = attn + 3 * d * f + 2 * d
    body = args.n_layers * block + d
    out = 0 if args.tie_embeddings else args.vocab_size * d
    emb = args.vocab_size * d
    return emb + body + out, body + out


def flops_per_token(args: ModelArgs, seq_len: int) -> float:
    """Training FLOPs per token: 6 x non-embedding params + 12 x layers x dim x seq (attention scores).

    Same formula as nanoGPT/torchtitan and our Hugging Face baseline (docs/benchmarks.md), so MFU compares.
    """
    _, non_embedding = count_params(args)
    return 6.0 * non_embedding + 12.0 * args.n_layers * args.dim * seq_len
