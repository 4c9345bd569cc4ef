"""A Llama-style decoder-only transformer: RMSNorm, RoPE, SwiGLU, grouped-query attention.

The model knows nothing about parallelism. It is built on the meta device (no memory), sharded by
parallelize.py, then materialised with `to_empty` and filled by `initial_value`, which gives every
parameter the same full value whatever the sharding, so runs with different layouts start identical.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError, ModelConfig


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1's frequency-dependent RoPE scaling (Hugging Face `rope_scaling` with rope_type "llama3").

    Low frequencies (wavelength above original_max_position_embeddings / low_freq_factor) are divided by
    factor, high ones (wavelength below original / high_freq_factor) kept, and those between interpolated.
    """

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclass(frozen=True)
class ModelArgs:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab_size: int
    max_seq_len: int
    tie_embeddings: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    rope_scaling: RopeScaling | None = None  # None: plain RoPE

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


PRESETS: dict[str, ModelArgs] = {
    # CI size; same shape as the "tiny" of shared/bench/hf_baseline.py.
    "tiny": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=4, ffn_dim=128, vocab_size=512, max_seq_len=256),
    # GPT-2 small's shape; SwiGLU's three matrices with ffn 2048 hold as many weights as GPT-2's 2 x 3072 MLP.
    "gpt2-124m": ModelArgs(
        dim=768,
        n_layers=12,
        n_heads=12,
        n_kv_heads=12,
        ffn_dim=2048,
        vocab_size=50304,
        max_seq_len=1024,
        tie_embeddings=True,
    ),
    # TinyLlama 1.1B's shape.
    "llama-1b": ModelArgs(
        dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, ffn_dim=5632, vocab_size=32000, max_seq_len=2048
    ),
    # Llama 3 8B's shape.
    "llama-8b": ModelArgs(
        dim=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        ffn_dim=14336,
        vocab_size=128256,
        max_seq_len=8192,
        rope_theta=500000.0,
    ),
}


def resolve_model_args(cfg: ModelConfig, *, seq_len: int, tokenizer_vocab: int | None) -> ModelArgs:
    """Preset first, explicit fields override; vocab falls back to the tokenizer's, context to the data's."""
    base = PRESETS[cfg.preset] if cfg.preset else None
    if not (cfg.vocab_size or base or tokenizer_vocab):
        raise ConfigError("model.vocabSize: required when there is no preset and the data has no tokenizer")
    dim = cfg.dim or base.dim
    n_heads = cfg.n_heads or base.n_heads
    args = ModelArgs(
        dim=dim,
        n_layers=cfg.n_layers or base.n_layers,
        n_heads=n_heads,
        n_kv_heads=cfg.n_kv_heads or (base.n_kv_heads if base and not cfg.n_heads else n_heads),
        ffn_dim=cfg.ffn_dim or (base.ffn_dim if base and not cfg.dim else _default_ffn(dim)),
        vocab_size=cfg.vocab_size or (base.vocab_size if base else tokenizer_vocab),
        max_seq_len=max(cfg.max_seq_len or (base.max_seq_len if base else seq_len), seq_len),
        tie_embeddings=cfg.tie_embeddings if cfg.tie_embeddings is not None else bool(base and base.tie_embeddings),
    )
    if base:
        args = replace(args, rope_theta=base.rope_theta)
    return args


def _default_ffn(dim: int) -> int:
    """Llama's rule: 8/3 x dim rounded up to a multiple of 64, so SwiGLU costs what a 4 x dim MLP does."""
    return 64 * math.ceil(8 * dim / 3 / 64)


def validate_model_args(args: ModelArgs) -> list[str]:
    """Shape problems as 'field: reason' lines (empty when fine)."""
    problems = []
    if args.dim % args.n_heads:
        problems.append(f"model.dim: {args.dim} is not divisible by model.heads {args.n_heads}")
    elif args.head_dim % 2:
        problems.append(f"model.dim: head size {args.head_dim} must be even for RoPE")
    if args.n_heads % args.n_kv_heads:
        problems.append(f"model.kvHeads: {args.n_kv_heads} does not divide model.heads {args.n_heads}")
    return problems


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
        n_rep = q.shape[1] // k.shape[1]
        if n_rep > 1:  # grouped-query attention: each kv head serves n_rep query heads
            k = k.repeat_interleave(n_rep, dim=1)
            v = v.repeat_interleave(n_rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(out.transpose(1, 2).reshape(bsz, seq, -1))


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
        self.init_buffers(None)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(tokens)
        for block in self.layers.values():
            h = block(h)
        return self.output(self.norm(h))

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

    Same formula as nanoGPT/torchtitan and shared/bench/hf_baseline.py, so MFU and the baseline compare.
    """
    _, non_embedding = count_params(args)
    return 6.0 * non_embedding + 12.0 * args.n_layers * args.dim * seq_len
