"""Token streams and the batch sampler.

Every source becomes one flat array of token ids (synthetic, a byte-/BPE-tokenised text file, or a nanoGPT
`.bin` memmap). A global batch is `global_batch_size` windows at offsets drawn from a generator seeded by
(seed, step), so the batch of step N is the same whatever the number of ranks: each data-parallel rank takes
its contiguous slice. The sampler's position is therefore just the step, which makes resume exact and lets a
checkpoint resume on a different number of ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import ConfigError, DataConfig

SYNTHETIC_TOKENS = 1 << 16


def synthetic_tokens(vocab_size: int, seed: int, n: int = SYNTHETIC_TOKENS) -> np.ndarray:
    """A learnable stream: a fixed random successor for each token, followed 90% of the time, noise otherwise.

    A model that learns the successor table drops from ln(vocab) to about 0.1 x ln(vocab) + H(0.9) nats.
    """
    rng = np.random.default_rng(seed)
    successor = rng.permutation(vocab_size)
    chains, length = 64, n // 64
    out = np.empty((chains, length), dtype=np.int64)
    out[:, 0] = rng.integers(0, vocab_size, chains)
    noise = rng.random((chains, length)) < 0.1
    random_tokens = rng.integers(0, vocab_size, (chains, length))
    for t in range(1, length):
        out[:, t] = np.where(noise[:, t], random_tokens[:, t], successor[out[:, t - 1]])
    return out.reshape(-1)


class Tokenizer:
    """Text to ids. 'byte' needs nothing; tiktoken / HF tokenizers only when installed and their files are local."""

    def __init__(self, spec: str):
        self.spec = spec
        if spec == "byte":
            self.vocab_size = 256
            self._encode = lambda text: list(text.encode("utf-8"))
        elif spec.startswith("tiktoken:"):
            try:
                import tiktoken

                enc = tiktoken.get_encoding(spec.split(":", 1)[1])
            except Exception as e:  # not installed, unknown name, or vocabulary not cached offline
                raise ConfigError(f"data.tokenizer: cannot load {spec!r}: {e}") from e
            self.vocab_size = enc.n_vocab
            self._encode = lambda text: enc.encode_ordinary(text)
        elif spec.startswith("hf:"):
            path = spec.split(":", 1)[1]
            try:
                from tokenizers import Tokenizer as HFTokenizer

                tok = HFTokenizer.from_file(path)
            except Exception as e:
                raise ConfigError(f"data.tokenizer: cannot load {spec!r}: {e}") from e
            self.vocab_size = tok.get_vocab_size()
            self._encode = lambda text: tok.encode(text).ids
        else:
            raise ConfigError(f"data.tokenizer: {spec!r} is not 'byte', 'tiktoken:<name>' or 'hf:<tokenizer.json>'")

    def encode(self, text: str) -> list[int]:
        return self._encode(text)


def load_tokens(cfg: DataConfig, *, vocab_size: int, seed: int) -> np.ndarray:
    """The flat token stream of the configured source (a memmap for .bin files: never read whole)."""
    if cfg.source == "synthetic":
        return synthetic_tokens(vocab_size, seed)
    path = Path(cfg.source)
    if not path.is_file():
        raise ConfigError(f"data.source: {cfg.source!r} is neither 'synthetic' nor an existing file")
    if path.suffix == ".bin":
        tokens = np.memmap(path, dtype=cfg.bin_dtype, mode="r")
    else:
        tokenizer = Tokenizer(cfg.tokenizer)
        tokens = np.asarray(tokenizer.encode(path.read_text(encoding="utf-8", errors="replace")), dtype=np.int64)
    if len(tokens) < cfg.seq_len + 2:
        raise ConfigError(f"data.source: {cfg.source!r} has {len(tokens)} tokens, fewer than data.seqLen + 2")
    return tokens


def tokenizer_vocab(cfg: DataConfig) -> int | None:
    """The vocabulary a text source needs (its tokenizer's); None for synthetic and .bin sources."""
    if cfg.source != "synthetic" and not cfg.source.endswith(".bin"):
        return Tokenizer(cfg.tokenizer).vocab_size
    return None


@dataclass
class BatchSampler:
    """Deterministic (seed, step) -> windows; this rank reads rows [dp_rank x per_rank, (dp_rank + 1) x per_rank)."""

    tokens: np.ndarray
    seq_len: int
    global_batch_size: int
    dp_rank: int
    dp_size: int
    seed: int
    step: int = 0  # global batches consumed: the data position saved in checkpoints

    def __post_init__(self) -> None:
        if self.global_batch_size % self.dp_size:
            raise ConfigError(
                f"training.globalBatchSize: {self.global_batch_size} is not divisible by {self.dp_size} "
                "data-parallel ranks"
            )

    def offsets(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        return rng.integers(0, len(self.tokens) - self.seq_len - 1, self.global_batch_size)

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets) for this rank: (global_batch / dp, seq_len) int64 arrays; advances the position."""
        per_rank = self.global_batch_size // self.dp_size
        mine = self.offsets(self.step)[self.dp_rank * per_rank : (self.dp_rank + 1) * per_rank]
        windows = np.stack([np.asarray(self.tokens[o : o + self.seq_len + 1], dtype=np.int64) for o in mine])
        self.step += 1
        return windows[:, :-1], windows[:, 1:]

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
