"""Token sources and the batch sampler.

A source is synthetic, a text file (tokenised at start-up: small data only), one `.bin` file, a glob of `.bin`
shards, or a directory written by `llmtrain_trainer.prepare` (its `manifest.json` lists the shards). Shards are
memory-mapped and never read whole; each carries its metadata (dtype, vocabulary size, token count, largest id) in
a JSON sidecar `<shard>.bin.json` (and in the directory's manifest), so nothing is guessed and the vocabulary check
costs nothing at start-up. A `.bin` without a sidecar is read as `data.binDtype` (uint16 when unset), nanoGPT-style;
its ids are then checked in one bounded-memory pass over the file.

A global batch is `global_batch_size` windows drawn from a generator seeded by (seed, step): first, for each row,
a source by weight (`data.sources`), then a window start uniformly over all windows of that source's shards (so
shards count in proportion to their tokens; windows never cross a shard boundary). Each data-parallel rank takes its
contiguous slice of rows, so the batch of step N is the same whatever the number of ranks; the sampler's position
is just the step, which makes resume exact and lets a checkpoint resume on a different number of ranks.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import ConfigError, DataConfig

SYNTHETIC_TOKENS = 1 << 16
MANIFEST = "manifest.json"
SIDECAR_SUFFIX = ".json"  # shard-00000.bin -> shard-00000.bin.json
SHARD_FORMAT = "llmtrain-shard/1"
MANIFEST_FORMAT = "llmtrain-shards/1"
DTYPES: dict[str, type[np.unsignedinteger]] = {"uint16": np.uint16, "uint32": np.uint32}
SCAN_CHUNK_TOKENS = 1 << 22  # vocabulary scan of sidecar-less .bin files: 4 Mi tokens (8-16 MiB) at a time
_GLOB_CHARS = "*?["


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


# ---------------------------------------------------------------------------------------------------------- shards


@dataclass(frozen=True)
class ShardMeta:
    """What a shard's sidecar (or its manifest entry) says about it."""

    dtype: str
    tokens: int
    max_id: int
    vocab_size: int | None = None

    @classmethod
    def parse(cls, raw: object, where: str) -> ShardMeta:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: not a JSON object")
        dtype, tokens, max_id = raw.get("dtype"), raw.get("tokens"), raw.get("maxId")
        if dtype not in DTYPES:
            raise ConfigError(f"{where}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        if not isinstance(tokens, int) or tokens < 0 or not isinstance(max_id, int):
            raise ConfigError(f"{where}: needs integer 'tokens' (>= 0) and 'maxId'")
        vocab = raw.get("vocabSize")
        return cls(dtype=dtype, tokens=tokens, max_id=max_id, vocab_size=vocab if isinstance(vocab, int) else None)

    def to_json(self) -> dict:
        return {"dtype": self.dtype, "tokens": self.tokens, "maxId": self.max_id, "vocabSize": self.vocab_size}


def sidecar_path(shard: Path) -> Path:
    return shard.with_name(shard.name + SIDECAR_SUFFIX)


def read_json(path: Path, field_name: str) -> dict:
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{field_name}: cannot read {path}: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{field_name}: {path} is not a JSON object")
    return raw


def read_manifest(directory: Path, field_name: str) -> list[tuple[Path, ShardMeta]]:
    """The shards a prepared directory's manifest lists; a manifest of an unfinished preparation is refused."""
    path = directory / MANIFEST
    raw = read_json(path, field_name)
    if raw.get("format") != MANIFEST_FORMAT:
        raise ConfigError(f"{field_name}: {path} is not an llmtrain shard manifest (format {raw.get('format')!r})")
    if not raw.get("complete"):
        done = len(raw.get("doneChunks", []))
        raise ConfigError(
            f"{field_name}: {path} is incomplete ({done} of {raw.get('chunks', '?')} chunks prepared): "
            "run llmtrain_trainer.prepare again to finish it"
        )
    entries = raw.get("shards")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{field_name}: {path} lists no shards")
    out = []
    for i, entry in enumerate(entries):
        name = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(name, str) or "/" in name:
            raise ConfigError(f"{field_name}: {path}: shards[{i}] has no plain 'file' name")
        out.append((directory / name, ShardMeta.parse(entry, f"{field_name}: {path} shards[{i}]")))
    return out


def open_shard(
    path: Path, meta: ShardMeta | None, *, bin_dtype: str | None, vocab_size: int, field_name: str
) -> np.ndarray:
    """Memory-map one `.bin` shard after checking its dtype, size and ids; every problem names the file."""
    if meta is None and sidecar_path(path).is_file():
        meta = ShardMeta.parse(read_json(sidecar_path(path), field_name), f"{field_name}: {sidecar_path(path)}")
    if not path.is_file():
        raise ConfigError(f"{field_name}: shard {path} does not exist")
    size = path.stat().st_size
    if meta is None:
        if (path.parent / MANIFEST).is_file():
            raise ConfigError(
                f"{field_name}: shard {path} has no sidecar {sidecar_path(path).name} although its directory holds "
                f"a {MANIFEST} (an unfinished or foreign file?)"
            )
        return _open_bare_bin(path, size, bin_dtype or "uint16", vocab_size=vocab_size, field_name=field_name)
    if bin_dtype is not None and bin_dtype != meta.dtype:
        raise ConfigError(
            f"{field_name}: {path} holds {meta.dtype} token ids (its sidecar says so) but data.binDtype is "
            f"{bin_dtype}: remove data.binDtype or set it to {meta.dtype}"
        )
    itemsize = np.dtype(meta.dtype).itemsize
    if size != meta.tokens * itemsize:
        raise ConfigError(
            f"{field_name}: {path} is {size} bytes but its sidecar says {meta.tokens} {meta.dtype} tokens "
            f"({meta.tokens * itemsize} bytes): truncated, or not the file the sidecar describes"
        )
    if meta.tokens == 0:
        raise ConfigError(f"{field_name}: shard {path} is empty")
    if meta.max_id >= vocab_size:
        raise ConfigError(
            f"{field_name}: {path} holds token id {meta.max_id} but the model's vocabulary has {vocab_size} ids "
            "(model.vocabSize, or the preset's): the data was tokenised for a larger vocabulary"
        )
    return np.memmap(path, dtype=meta.dtype, mode="r", shape=(meta.tokens,))


def _open_bare_bin(path: Path, size: int, dtype: str, *, vocab_size: int, field_name: str) -> np.ndarray:
    """A `.bin` without a sidecar, read as `dtype`: the size, a uint32-read-as-uint16 pattern and every id are checked.

    The id check is one pass over the file in SCAN_CHUNK_TOKENS pieces (bounded memory, no page cache pinned);
    files written by `prepare` skip it because their sidecar records the largest id.
    """
    itemsize = np.dtype(dtype).itemsize
    if size == 0:
        raise ConfigError(f"{field_name}: shard {path} is empty")
    if size % itemsize:
        raise ConfigError(
            f"{field_name}: {path} is {size} bytes, not a whole number of {dtype} tokens: wrong data.binDtype?"
        )
    if dtype == "uint16":
        head = np.fromfile(path, dtype=np.uint16, count=min(size // 2, 1 << 16) & ~1)
        if len(head) >= 64 and not head[1::2].any() and head[0::2].any():
            raise ConfigError(
                f"{field_name}: {path} looks like uint32 token ids read as uint16 (every second 16-bit word is 0): "
                "set data.binDtype: uint32, or prepare the data with llmtrain_trainer.prepare (it writes a sidecar)"
            )
    n = size // itemsize
    for start in range(0, n, SCAN_CHUNK_TOKENS):
        chunk = np.fromfile(path, dtype=dtype, count=min(SCAN_CHUNK_TOKENS, n - start), offset=start * itemsize)
        bad = np.flatnonzero(chunk >= vocab_size)
        if len(bad):
            pos = start + int(bad[0])
            raise ConfigError(
                f"{field_name}: {path} holds token id {int(chunk[bad[0]])} (at token {pos}) but the model's "
                f"vocabulary has {vocab_size} ids: wrong data.binDtype ({dtype}), or a larger tokenizer's data"
            )
    return np.memmap(path, dtype=dtype, mode="r")


# ------------------------------------------------------------------------------------------------------- sources


def is_text_source(spec: str) -> bool:
    """A source the trainer tokenises itself (anything but synthetic, .bin, a manifest, a glob or a directory)."""
    if spec == "synthetic" or spec.endswith((".bin", MANIFEST)) or any(c in spec for c in _GLOB_CHARS):
        return False
    return not Path(spec).is_dir()


def shard_files(spec: str, field_name: str) -> list[tuple[Path, ShardMeta | None]]:
    """The `.bin` shards a source names, in a fixed order (manifest order, else sorted paths)."""
    path = Path(spec)
    if path.is_dir():
        if (path / MANIFEST).is_file():
            return list(read_manifest(path, field_name))
        files = sorted(path.glob("*.bin"))
        if not files:
            raise ConfigError(f"{field_name}: directory {spec!r} holds neither a {MANIFEST} nor .bin shards")
        return [(f, None) for f in files]
    if path.name == MANIFEST and path.is_file():
        return list(read_manifest(path.parent, field_name))
    if any(c in spec for c in _GLOB_CHARS):
        files = sorted(Path(p) for p in glob.glob(spec) if not p.endswith(SIDECAR_SUFFIX))
        if not files:
            raise ConfigError(f"{field_name}: {spec!r} matches no files")
        odd = [str(f) for f in files if f.suffix != ".bin"]
        if odd:
            raise ConfigError(f"{field_name}: {spec!r} matches files that are not .bin shards: {odd[0]}")
        return [(f, None) for f in files]
    if path.is_file() and path.suffix == ".bin":
        return [(path, None)]
    raise ConfigError(f"{field_name}: {spec!r} is neither 'synthetic' nor an existing file, directory or glob")


def open_source(cfg: DataConfig, spec: str, *, vocab_size: int, seed: int, field_name: str) -> list[np.ndarray]:
    """The token arrays of one source, checked: one per shard (memmaps), or one for synthetic and text sources."""
    if spec == "synthetic":
        return [synthetic_tokens(vocab_size, seed)]
    if is_text_source(spec):
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"{field_name}: {spec!r} is neither 'synthetic' nor an existing file, directory or glob")
        tokenizer = Tokenizer(cfg.tokenizer)
        tokens = np.asarray(tokenizer.encode(path.read_text(encoding="utf-8", errors="replace")), dtype=np.int64)
        if len(tokens) and int(tokens.max()) >= vocab_size:
            raise ConfigError(
                f"{field_name}: {spec} tokenises to id {int(tokens.max())} but the model's vocabulary has "
                f"{vocab_size} ids"
            )
        arrays, names = [tokens], [spec]
    else:
        found = shard_files(spec, field_name)
        arrays = [
            open_shard(p, m, bin_dtype=cfg.bin_dtype, vocab_size=vocab_size, field_name=field_name) for p, m in found
        ]
        names = [str(p) for p, _ in found]
    for name, tokens in zip(names, arrays, strict=True):
        if len(tokens) < cfg.seq_len + 2:
            raise ConfigError(
                f"{field_name}: {name} has {len(tokens)} tokens, fewer than data.seqLen + 2 ({cfg.seq_len + 2}): "
                "shorten data.seqLen or prepare larger shards"
            )
    return arrays


@dataclass
class Mixture:
    """Weighted sources, each a list of token arrays (memmapped shards); windows never cross an array boundary."""

    sources: list[list[np.ndarray]]
    weights: list[float] = field(default_factory=lambda: [1.0])

    @property
    def tokens(self) -> int:
        return sum(len(a) for arrays in self.sources for a in arrays)


TokenStream = np.ndarray | Mixture


def load_tokens(cfg: DataConfig, *, vocab_size: int, seed: int, field_name: str = "data.source") -> TokenStream:
    """The configured data: an array for one file (a memmap for .bin) or synthetic data, else a Mixture.

    Every shard's dtype, size and largest id are checked here, before the model is built: a problem is a
    ConfigError naming the file.
    """
    if cfg.sources:
        return Mixture(
            [
                open_source(cfg, s.path, vocab_size=vocab_size, seed=seed, field_name=f"data.sources[{i}].path")
                for i, s in enumerate(cfg.sources)
            ],
            [s.weight for s in cfg.sources],
        )
    arrays = open_source(cfg, cfg.source, vocab_size=vocab_size, seed=seed, field_name=field_name)
    return arrays[0] if len(arrays) == 1 else Mixture([arrays])


def tokenizer_vocab(cfg: DataConfig) -> int | None:
    """The vocabulary the text sources need (their tokenizer's); None when every source is synthetic or shards."""
    specs = [s.path for s in cfg.sources] if cfg.sources else [cfg.source]
    return Tokenizer(cfg.tokenizer).vocab_size if any(is_text_source(s) for s in specs) else None


# ------------------------------------------------------------------------------------------------------- sampler


class WindowIndex:
    """Where the windows of a Mixture start: window g of source s lies in array searchsorted(ends[s], g)."""

    def __init__(self, mixture: Mixture, seq_len: int):
        self.seq_len = seq_len
        self.arrays = mixture.sources
        # like the original single-array sampler: starts 0 .. len - seq_len - 2 (upper bound exclusive)
        self.counts = [np.array([len(a) - seq_len - 1 for a in arrays], dtype=np.int64) for arrays in self.arrays]
        for arrays, counts in zip(self.arrays, self.counts, strict=True):
            if (counts < 1).any():
                short = len(arrays[int(np.argmin(counts))])
                raise ConfigError(f"data.seqLen: {seq_len} does not fit a source array of {short} tokens")
        self.ends = [np.cumsum(c) for c in self.counts]
        self.totals = np.array([e[-1] for e in self.ends], dtype=np.int64)
        weights = np.asarray(mixture.weights, dtype=np.float64)
        self.p = weights / weights.sum()

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """n windows as (source, array, start) index arrays."""
        if len(self.totals) == 1:  # one source: the same draws as the original single-array sampler
            source = np.zeros(n, dtype=np.int64)
            g = rng.integers(0, self.totals[0], n)
        else:
            source = rng.choice(len(self.totals), size=n, p=self.p)
            g = rng.integers(0, self.totals[source])
        array = np.empty(n, dtype=np.int64)
        start = np.empty(n, dtype=np.int64)
        for s in np.unique(source):
            rows = np.flatnonzero(source == s)
            idx = np.searchsorted(self.ends[s], g[rows], side="right")
            array[rows] = idx
            start[rows] = g[rows] - (self.ends[s][idx] - self.counts[s][idx])
        return source, array, start

    def windows(self, source: np.ndarray, array: np.ndarray, start: np.ndarray) -> np.ndarray:
        """(n, seq_len + 1) int64 token windows; reads only those pages of the memmaps."""
        return np.stack(
            [
                np.asarray(self.arrays[s][a][o : o + self.seq_len + 1], dtype=np.int64)
                for s, a, o in zip(source.tolist(), array.tolist(), start.tolist(), strict=True)
            ]
        )


@dataclass
class BatchSampler:
    """Deterministic (seed, step) -> windows; this rank reads rows [dp_rank x per_rank, (dp_rank + 1) x per_rank)."""

    tokens: TokenStream
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
        mixture = self.tokens if isinstance(self.tokens, Mixture) else Mixture([[self.tokens]])
        self.index = WindowIndex(mixture, self.seq_len)

    def locate(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The global batch of `step` as (source, array, start) per row: a pure function of (seed, step)."""
        return self.index.draw(np.random.default_rng([self.seed, step]), self.global_batch_size)

    def batch_at(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets) of `step` for this rank: (global_batch / dp, seq_len) int64 arrays; no state changes,
        so a background thread can prepare batches ahead (prefetch.py)."""
        per_rank = self.global_batch_size // self.dp_size
        mine = slice(self.dp_rank * per_rank, (self.dp_rank + 1) * per_rank)
        windows = self.index.windows(*(a[mine] for a in self.locate(step)))
        return windows[:, :-1], windows[:, 1:]

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """The batch at the current position; advances the position."""
        batch = self.batch_at(self.step)
        self.step += 1
        return batch

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
