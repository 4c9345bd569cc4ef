"""Tokenise text / JSONL into token shards the trainer memory-maps: `python -m llmtrain_trainer.prepare`.

    python -m llmtrain_trainer.prepare --tokenizer tokenizer.json --out /data/shards corpus/ more.jsonl

Inputs (files, directories, globs) are split into chunks of about `--chunk-mb` of input at line boundaries (small
files are packed together, a small tail is folded into the previous chunk); each chunk becomes one shard
`shard-NNNNN.bin` (little-endian uint16, or uint32 when the vocabulary needs it) with a sidecar
`shard-NNNNN.bin.json` (dtype, token count, largest id, vocabulary size, tokenizer digest). `manifest.json` lists
the finished shards and is rewritten atomically after each one, so an interrupted run started again with the same
arguments skips what is done; a different plan (other inputs, options or tokenizer) in the same `--out` is
refused. Chunks are tokenised in parallel (`--workers` processes); each worker streams its byte ranges line by line
and writes tokens as it goes, so memory is bounded by the tokenizer plus one batch of lines per worker, not by the
data. Progress goes to stderr.

Documents: each JSONL line (its `--text-key` field) is a document; a text file is one document. Each document is
followed by the end-of-text token (`--eos-token`, found in the tokenizer under a usual name when not given;
`--no-eos` to omit). Special tokens of the tokenizer's post-processor (BOS templates) are not added.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import DTYPES, MANIFEST, MANIFEST_FORMAT, SHARD_FORMAT, sidecar_path

EOS_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "[EOS]", "<|eot_id|>")
TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
LINES_PER_BATCH = 512
MAX_LINE_BYTES = 1 << 20  # a text "line" longer than this is cut at its last space (JSONL lines are never cut)
FLUSH_TOKENS = 1 << 20


class PrepareError(Exception):
    """A problem with the inputs or the output directory; the message says what to do."""


@dataclass(frozen=True)
class Piece:
    path: str
    start: int
    end: int
    last: bool  # ends at the end of its file (a text file's document ends here)


@dataclass(frozen=True)
class Options:
    tokenizer: str
    out: str
    dtype: str
    eos_id: int | None
    text_key: str
    vocab_size: int
    tokenizer_sha256: str


def file_format(path: str) -> str:
    if path.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if path.endswith(TEXT_SUFFIXES):
        return "text"
    raise PrepareError(f"{path}: unknown input type (expected {', '.join(TEXT_SUFFIXES + JSONL_SUFFIXES)})")


def expand_inputs(specs: list[str]) -> list[str]:
    """Files named directly, found under directories (recursively) or matched by globs; sorted, de-duplicated."""
    found: list[str] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found += [
                str(f) for f in sorted(p.rglob("*")) if f.is_file() and f.name.endswith(TEXT_SUFFIXES + JSONL_SUFFIXES)
            ]
        elif p.is_file():
            found.append(str(p))
        else:
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                raise PrepareError(f"{spec}: no such file, directory or matching glob")
            found += [m for m in matches if Path(m).is_file()]
    out = sorted({str(Path(f).resolve()) for f in found})
    for f in out:
        file_format(f)
    if not out:
        raise PrepareError("no input files")
    return out


def plan_chunks(
    files: list[tuple[str, int]], chunk_bytes: int, align: Callable[[str, int], int] | None = None
) -> list[list[Piece]]:
    """Byte ranges packed into chunks of about chunk_bytes; a last chunk under half that joins the one before.

    `align(path, pos)` moves a cut inside a file to the next line start (prepare passes next_line_start), so every
    piece starts on a line and a line is never split between shards.
    """
    chunks: list[list[Piece]] = []
    current: list[Piece] = []
    filled = 0
    for path, size in files:
        offset = 0
        while offset < size:
            end = min(size, offset + chunk_bytes - filled)
            if align is not None and end < size:
                end = align(path, end)
            current.append(Piece(path, offset, end, end == size))
            filled += end - offset
            offset = end
            if filled >= chunk_bytes:
                chunks.append(current)
                current, filled = [], 0
    if current:
        if chunks and filled < chunk_bytes // 2:
            chunks[-1] = chunks[-1] + current
        else:
            chunks.append(current)
    return chunks


def next_line_start(path: str, pos: int) -> int:
    """The first line start at or after pos (the file's size if none): reads only the rest of one line."""
    with open(path, "rb") as f:
        f.seek(pos - 1)
        while True:
            line = f.readline(MAX_LINE_BYTES)
            if not line or line.endswith(b"\n"):
                return f.tell()


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.bin"


# ------------------------------------------------------------------------------------------------------- workers

_tokenizer = None
_progress = None


def _init_worker(tokenizer_path: str, progress) -> None:
    global _tokenizer, _progress
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker process; parallelism is ours
    from tokenizers import Tokenizer

    _tokenizer = Tokenizer.from_file(tokenizer_path)
    _progress = progress


def _lines(piece: Piece, fmt: str):
    """Raw lines whose first byte lies in [start, end); text lines longer than MAX_LINE_BYTES are cut at a space."""
    with open(piece.path, "rb") as f:
        if piece.start > 0:
            f.seek(piece.start - 1)
            while True:  # the line holding byte start - 1 belongs to the piece before; skip it in bounded reads
                skipped = f.readline(MAX_LINE_BYTES)
                if not skipped or skipped.endswith(b"\n"):
                    break
        carry, in_line = b"", False  # in_line: the physical line goes on (a long text line cut in pieces)
        while True:
            if not in_line and f.tell() >= piece.end:
                return
            if fmt == "jsonl":
                line = f.readline()
            else:
                line = carry + f.readline(MAX_LINE_BYTES)
                carry = b""
                in_line = bool(line) and not line.endswith(b"\n")
                if in_line and len(line) >= MAX_LINE_BYTES:
                    cut = line.rfind(b" ")
                    if cut > 0:
                        line, carry = line[: cut + 1], line[cut + 1 :]
            if not line:
                return
            yield line


def _texts(piece: Piece, fmt: str, text_key: str):
    for n, raw in enumerate(_lines(piece, fmt)):
        if fmt == "text":
            yield raw.decode("utf-8", errors="replace"), len(raw), False
            continue
        if not raw.strip():
            yield "", len(raw), False
            continue
        try:
            doc = json.loads(raw)
            text = doc[text_key]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise PrepareError(
                f"{piece.path}: a line near byte {piece.start} (+{n} lines) is not JSON with a {text_key!r} string: {e}"
            ) from e
        if not isinstance(text, str):
            raise PrepareError(f"{piece.path}: {text_key!r} is not a string near byte {piece.start}")
        yield text, len(raw), True


def tokenize_chunk(index: int, pieces: list[Piece], opts: Options) -> dict:
    """Tokenise one chunk into shard-NNNNN.bin (+ sidecar), streaming; returns its manifest entry."""
    out = Path(opts.out)
    final = out / shard_name(index)
    tmp = final.with_name(final.name + ".tmp")
    dtype = np.dtype(opts.dtype).newbyteorder("<")  # little-endian on any host
    tokens = 0
    max_id = -1
    pending: list[np.ndarray] = []
    pending_tokens = 0
    with open(tmp, "wb") as sink:

        def emit(ids: list[int]) -> None:
            nonlocal tokens, max_id, pending_tokens
            if not ids:
                return
            arr = np.asarray(ids, dtype=np.int64)
            max_id = max(max_id, int(arr.max()))
            pending.append(arr.astype(dtype))
            pending_tokens += len(arr)
            tokens += len(arr)
            if pending_tokens >= FLUSH_TOKENS:
                flush()

        def flush() -> None:
            nonlocal pending_tokens
            if pending:
                np.concatenate(pending).tofile(sink)
                pending.clear()
                pending_tokens = 0

        for piece in pieces:
            fmt = file_format(piece.path)
            batch: list[tuple[str, bool]] = []
            done_bytes = 0

            def encode(batch: list[tuple[str, bool]]) -> None:
                texts = [t for t, _ in batch]
                for (_, is_doc), enc in zip(
                    batch, _tokenizer.encode_batch(texts, add_special_tokens=False), strict=True
                ):
                    ids = enc.ids
                    if is_doc and opts.eos_id is not None:
                        ids = [*ids, opts.eos_id]
                    emit(ids)

            for text, nbytes, is_doc in _texts(piece, fmt, opts.text_key):
                batch.append((text, is_doc))
                done_bytes += nbytes
                if len(batch) >= LINES_PER_BATCH:
                    encode(batch)
                    batch = []
                    _report(done_bytes)
                    done_bytes = 0
            encode(batch)
            if fmt == "text" and piece.last and opts.eos_id is not None:
                emit([opts.eos_id])
            _report(done_bytes)
        flush()
        sink.flush()
        os.fsync(sink.fileno())
    entry = {
        "file": final.name,
        "chunk": index,
        "dtype": opts.dtype,
        "tokens": tokens,
        "maxId": max_id,
        "vocabSize": opts.vocab_size,
    }
    if tokens == 0:
        tmp.unlink()
        return entry
    if max_id >= opts.vocab_size:  # cannot happen with a consistent tokenizer.json; never write such a shard
        raise PrepareError(f"{final}: token id {max_id} >= the tokenizer's vocabulary {opts.vocab_size}")
    os.replace(tmp, final)
    write_json_atomic(
        sidecar_path(final),
        {"format": SHARD_FORMAT, **entry, "tokenizerSha256": opts.tokenizer_sha256, "eosId": opts.eos_id},
    )
    return entry


def _report(nbytes: int) -> None:
    if _progress is not None and nbytes:
        with _progress.get_lock():
            _progress.value += nbytes


def _run_chunk(args: tuple[int, list[Piece], Options]) -> dict:
    return tokenize_chunk(*args)


# -------------------------------------------------------------------------------------------------------- driver


class Progress:
    """A one-line progress bar on stderr (a line every few seconds when stderr is not a terminal)."""

    def __init__(self, total_bytes: int, total_chunks: int, done_chunks: int, done_bytes: int):
        self.total, self.chunks, self.done_chunks = total_bytes, total_chunks, done_chunks
        self.base = done_bytes
        self.t0 = time.monotonic()
        self.last = 0.0
        self.tty = sys.stderr.isatty()

    def show(self, processed: int, done_chunks: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < (0.5 if self.tty else 5.0):
            return
        self.last = now
        done = min(self.base + processed, self.total)
        rate = processed / max(now - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        width = 30
        filled = int(width * done / max(self.total, 1))
        line = (
            f"prepare [{'#' * filled}{'.' * (width - filled)}] {100 * done / max(self.total, 1):5.1f}% "
            f"{done / 1e6:.1f}/{self.total / 1e6:.1f} MB {rate / 1e6:.1f} MB/s shards {done_chunks}/{self.chunks} "
            + (f"eta {eta:.0f}s" if eta != float("inf") else "eta ?")
        )
        print(
            ("\r" + line) if self.tty else line, end="\n" if final or not self.tty else "", file=sys.stderr, flush=True
        )


def find_eos(tokenizer, name: str | None) -> int | None:
    if name is not None:
        eos = tokenizer.token_to_id(name)
        if eos is None:
            raise PrepareError(f"--eos-token {name!r} is not in the tokenizer's vocabulary")
        return eos
    for candidate in EOS_CANDIDATES:
        eos = tokenizer.token_to_id(candidate)
        if eos is not None:
            return eos
    raise PrepareError(
        f"the tokenizer has none of {', '.join(EOS_CANDIDATES)}: name its end-of-text token with --eos-token, "
        "or pass --no-eos"
    )


def prepare(
    inputs: list[str],
    out: str,
    tokenizer_path: str,
    *,
    workers: int = 1,
    chunk_mb: float = 64,
    dtype: str = "auto",
    text_key: str = "text",
    eos_token: str | None = None,
    no_eos: bool = False,
    progress: bool = True,
) -> dict:
    """Prepare (or finish preparing) `out`; returns the final manifest."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(tokenizer_path)
    except Exception as e:
        raise PrepareError(f"--tokenizer {tokenizer_path}: cannot load: {e}") from e
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    if dtype == "auto":
        dtype = "uint16" if vocab_size <= 1 << 16 else "uint32"
    elif vocab_size > np.iinfo(DTYPES[dtype]).max + 1:
        raise PrepareError(f"--dtype {dtype} cannot hold a vocabulary of {vocab_size} ids: use uint32")
    eos_id = None if no_eos else find_eos(tokenizer, eos_token)
    files = [(f, os.path.getsize(f)) for f in expand_inputs(inputs)]
    chunk_bytes = max(int(chunk_mb * (1 << 20)), 1)
    chunks = plan_chunks([(f, s) for f, s in files if s > 0], chunk_bytes, align=next_line_start)
    tok_sha = sha256_file(tokenizer_path)
    plan = {
        "inputs": [[f, s, os.stat(f).st_mtime_ns] for f, s in files],
        "chunkBytes": chunk_bytes,
        "dtype": dtype,
        "eosId": eos_id,
        "textKey": text_key,
        "tokenizerSha256": tok_sha,
    }
    plan_sha = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()
    opts = Options(
        tokenizer=str(Path(tokenizer_path).resolve()),
        out=str(Path(out).resolve()),
        dtype=dtype,
        eos_id=eos_id,
        text_key=text_key,
        vocab_size=vocab_size,
        tokenizer_sha256=tok_sha,
    )
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST
    manifest = {
        "format": MANIFEST_FORMAT,
        "complete": False,
        "dtype": dtype,
        "vocabSize": vocab_size,
        "tokenizer": {"file": opts.tokenizer, "sha256": tok_sha, "eosId": eos_id},
        "plan": {"sha256": plan_sha, **plan},
        "chunks": len(chunks),
        "doneChunks": [],
        "tokens": 0,
        "shards": [],
    }
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old.get("plan", {}).get("sha256") != plan_sha:
            raise PrepareError(
                f"{manifest_path} was written for other inputs, options or tokenizer: use another --out, or delete it"
            )
        manifest = old
    done = set(manifest["doneChunks"])
    todo = [(i, c) for i, c in enumerate(chunks) if i not in done]
    sizes = [sum(p.end - p.start for p in c) for c in chunks]
    bar = Progress(sum(sizes), len(chunks), len(done), sum(sizes[i] for i in done)) if progress else None

    def record(entry: dict) -> None:
        manifest["doneChunks"] = sorted({*manifest["doneChunks"], entry["chunk"]})
        if entry["tokens"]:
            manifest["shards"] = sorted([*manifest["shards"], entry], key=lambda e: e["chunk"])
        manifest["tokens"] = sum(e["tokens"] for e in manifest["shards"])
        manifest["complete"] = len(manifest["doneChunks"]) == len(chunks)
        write_json_atomic(manifest_path, manifest)

    ctx = mp.get_context("spawn")  # no fork of a process holding the tokenizer's Rust thread pool
    counter = ctx.Value("q", 0)
    write_json_atomic(manifest_path, manifest)
    if workers <= 1:
        _init_worker(opts.tokenizer, counter)
        for i, c in todo:
            record(tokenize_chunk(i, c, opts))
            if bar:
                bar.show(counter.value, len(manifest["doneChunks"]))
    else:
        with ctx.Pool(workers, initializer=_init_worker, initargs=(opts.tokenizer, counter)) as pool:
            results = [pool.apply_async(_run_chunk, ((i, c, opts),)) for i, c in todo]
            while results:
                for r in [r for r in results if r.ready()]:
                    record(r.get())
                    results.remove(r)
                if bar:
                    bar.show(counter.value, len(manifest["doneChunks"]))
                time.sleep(0.1)
    manifest["complete"] = True
    write_json_atomic(manifest_path, manifest)
    if bar:
        bar.show(counter.value, len(manifest["doneChunks"]), final=True)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmtrain_trainer.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="text (.txt/.md) or JSONL files, directories or globs")
    parser.add_argument("--tokenizer", required=True, help="a Hugging Face tokenizer.json")
    parser.add_argument("--out", required=True, help="output directory (shards, sidecars, manifest.json)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="tokenising processes")
    parser.add_argument("--chunk-mb", type=float, default=64, help="input MiB per shard (default 64)")
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto", help="token type (auto: by vocabulary)")
    parser.add_argument("--text-key", default="text", help="JSONL field holding the text (default 'text')")
    parser.add_argument("--eos-token", help="end-of-text token appended to each document (default: found by name)")
    parser.add_argument("--no-eos", action="store_true", help="append nothing between documents")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        manifest = prepare(
            args.inputs,
            args.out,
            args.tokenizer,
            workers=args.workers,
            chunk_mb=args.chunk_mb,
            dtype=args.dtype,
            text_key=args.text_key,
            eos_token=args.eos_token,
            no_eos=args.no_eos,
            progress=not args.quiet,
        )
    except PrepareError as e:
        print(f"prepare: {e}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "out": args.out,
                "shards": len(manifest["shards"]),
                "tokens": manifest["tokens"],
                "dtype": manifest["dtype"],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
