"""Named model shapes and the resolution of a model section (preset + explicit overrides) to a full shape.

The trainer builds its model from `resolve_shape`; the operator checks tensor-parallel divisibility against the
same resolution before any pod starts, so both always agree on what a preset means.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .errors import ConfigError

if TYPE_CHECKING:
    from .sections import ModelSection


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
class ModelShape:
    """A Llama-style decoder's full shape: what the trainer's model is built from."""

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


PRESETS: dict[str, ModelShape] = {
    # CI size; the same shape as the "tiny" of the Hugging Face baseline benchmark.
    "tiny": ModelShape(dim=64, n_layers=2, n_heads=4, n_kv_heads=4, ffn_dim=128, vocab_size=512, max_seq_len=256),
    # GPT-2 small's shape; SwiGLU's three matrices with ffn 2048 hold as many weights as GPT-2's 2 x 3072 MLP.
    "gpt2-124m": ModelShape(
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
    "llama-1b": ModelShape(
        dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, ffn_dim=5632, vocab_size=32000, max_seq_len=2048
    ),
    # Llama 3 8B's shape.
    "llama-8b": ModelShape(
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


# The names, for the API schema: derived from the table, so a preset is declared in one place.
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


def default_ffn(dim: int) -> int:
    """Llama's rule: 8/3 x dim rounded up to a multiple of 64, so SwiGLU costs what a 4 x dim MLP does."""
    return 64 * math.ceil(8 * dim / 3 / 64)


SHAPE_KEYS = tuple(f.name for f in dataclasses.fields(ModelShape) if f.name != "rope_scaling")


def resolved_fields(model: ModelSection, *, seq_len: int, tokenizer_vocab: int | None) -> dict[str, object]:
    """Preset first, explicit fields override; vocab falls back to the tokenizer's (None if unknown), context to
    the data's sequence length. kvHeads follows an explicit heads override rather than the preset's.

    With model.init the shape is in a config.json on a volume: every value is None (unknown here), so checks
    that need the shape skip it and the trainer, which reads the file, checks it at start-up."""
    if model.shape_on_volume:
        return dict.fromkeys(SHAPE_KEYS)
    base = PRESETS[model.preset] if model.preset else None
    dim = model.dim or base.dim
    heads = model.heads or base.n_heads
    return {
        "dim": dim,
        "n_layers": model.layers or base.n_layers,
        "n_heads": heads,
        "n_kv_heads": model.kv_heads or (base.n_kv_heads if base and not model.heads else heads),
        "ffn_dim": model.ffn_dim or (base.ffn_dim if base and not model.dim else default_ffn(dim)),
        "vocab_size": model.vocab_size or (base.vocab_size if base else tokenizer_vocab),
        "max_seq_len": max(model.max_seq_len or (base.max_seq_len if base else seq_len), seq_len),
        "tie_embeddings": model.tie_embeddings
        if model.tie_embeddings is not None
        else bool(base and base.tie_embeddings),
        "rope_theta": model.rope_theta or (base.rope_theta if base else ModelShape.rope_theta),
        "norm_eps": model.norm_eps or (base.norm_eps if base else ModelShape.norm_eps),
    }


def shape_known(fields: dict[str, object]) -> bool:
    """Whether resolved_fields could tell the shape (False with model.init: it is on a volume)."""
    return fields["dim"] is not None


def resolve_shape(model: ModelSection, *, seq_len: int, tokenizer_vocab: int | None) -> ModelShape:
    if model.shape_on_volume:
        raise ConfigError("model.init: the shape is the Hugging Face config.json's; read it with load_hf_model_args")
    fields = resolved_fields(model, seq_len=seq_len, tokenizer_vocab=tokenizer_vocab)
    if fields["vocab_size"] is None:
        raise ConfigError("model.vocabSize: required when there is no preset and the data has no tokenizer")
    return ModelShape(**fields)  # type: ignore[arg-type]


def tensor_parallel_dims(fields: dict[str, object]) -> dict[str, int | None]:
    """The dimensions tensor parallelism splits across ranks, by their spec names (None when not known yet)."""
    return {
        "heads": fields["n_heads"],  # type: ignore[dict-item]
        "kvHeads": fields["n_kv_heads"],  # type: ignore[dict-item]
        "ffnDim": fields["ffn_dim"],  # type: ignore[dict-item]
        "vocabSize": fields["vocab_size"],  # type: ignore[dict-item]
    }
