"""The preparation tool: text / JSONL -> token shards + sidecars + manifest, in parallel, resumable, streaming.

The tokenizer is a small byte-level BPE trained here on synthetic English-like text (english_like.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from english_like import english_like, train_tokenizer
from llmtrain_trainer import prepare as prepare_module
from llmtrain_trainer.config import ConfigError, DataConfig
from llmtrain_trainer.data import MANIFEST, Mixture, load_tokens, sidecar_path
from llmtrain_trainer.prepare import Piece, PrepareError, next_line_start, plan_chunks, prepare
from tokenizers import Tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> str:
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture
def corpus(tmp_path):
    """Two text files (one document each) and a JSONL file of five documents: about 60 KB."""
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "a.txt").write_text(english_like(4000, seed=1))
    (root / "b.txt").write_text(english_like(2500, seed=2))
    docs = [{"id": i, "text": english_like(300, seed=10 + i)} for i in range(5)]
    (root / "c.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    return root


def shards(out):
    return {p.name: p.read_bytes() for p in sorted(out.glob("shard-*.bin"))}


def test_chunks_split_large_files_and_pack_small_ones_a_small_tail_joins_the_chunk_before():
    chunks = plan_chunks([("big", 250), ("s1", 10), ("s2", 30), ("tail", 15)], chunk_bytes=100)
    assert chunks == [
        [Piece("big", 0, 100, last=False)],
        [Piece("big", 100, 200, last=False)],
        [
            Piece("big", 200, 250, last=True),
            Piece("s1", 0, 10, last=True),
            Piece("s2", 0, 30, last=True),
            Piece("tail", 0, 10, last=False),
            Piece("tail", 10, 15, last=True),  # 5 bytes: under half a chunk, so not a shard of its own
        ],
    ]


def test_cuts_move_to_the_next_line_start_so_no_line_is_split_between_shards(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("aaaa\nbbbbbbbbbb\ncc\n")  # lines start at 0, 5, 16; size 19
    chunks = plan_chunks([(str(path), 19)], chunk_bytes=6, align=next_line_start)
    assert [[(p.start, p.end) for p in c] for c in chunks] == [[(0, 16)], [(16, 19)]]


def test_shards_decode_back_to_the_input_documents_each_followed_by_end_of_text(tmp_path, corpus, tokenizer):
    out = tmp_path / "shards"
    manifest = prepare([str(corpus)], str(out), tokenizer, chunk_mb=0.01, progress=False)
    tok = Tokenizer.from_file(tokenizer)
    eos = tok.token_to_id("<|endoftext|>")
    assert manifest["complete"] and manifest["dtype"] == "uint16" and manifest["tokenizer"]["eosId"] == eos
    assert len(manifest["shards"]) > 2  # about 50 KB in 10 KB chunks
    ids = np.concatenate([np.fromfile(out / s["file"], dtype="<u2") for s in manifest["shards"]])
    assert len(ids) == manifest["tokens"] == sum(s["tokens"] for s in manifest["shards"])
    docs = np.split(ids, np.flatnonzero(ids == eos) + 1)[:-1]
    texts = [tok.decode(d[:-1].tolist()) for d in docs]
    expected = [(corpus / "a.txt").read_text(), (corpus / "b.txt").read_text()]
    expected += [json.loads(line)["text"] for line in (corpus / "c.jsonl").read_text().splitlines()]
    assert texts == expected  # documents in input order, byte ranges cut only at line boundaries
    for s in manifest["shards"]:
        sidecar = json.loads(sidecar_path(out / s["file"]).read_text())
        assert sidecar["dtype"] == "uint16" and sidecar["tokens"] == s["tokens"] and sidecar["maxId"] == s["maxId"]
        assert sidecar["vocabSize"] == tok.get_vocab_size() and sidecar["tokenizerSha256"]


def test_the_trainer_reads_a_prepared_directory_without_being_told_its_dtype(tmp_path, corpus, tokenizer):
    out = tmp_path / "shards"
    manifest = prepare([str(corpus)], str(out), tokenizer, chunk_mb=0.01, dtype="uint32", progress=False)
    stream = load_tokens(DataConfig(source=str(out), seqLen=16), vocab_size=320, seed=0)
    assert isinstance(stream, Mixture) and stream.tokens == manifest["tokens"]
    assert {a.dtype for a in stream.sources[0]} == {np.dtype("uint32")}
    with pytest.raises(ConfigError, match=r"shard-00000\.bin holds uint32 token ids"):
        load_tokens(DataConfig(source=str(out), seqLen=16, binDtype="uint16"), vocab_size=320, seed=0)
    with pytest.raises(ConfigError, match=r"shard-00000\.bin holds token id \d+ but the model's vocabulary has 100"):
        load_tokens(DataConfig(source=str(out), seqLen=16), vocab_size=100, seed=0)


def test_parallel_workers_write_the_same_shards_as_one(tmp_path, corpus, tokenizer):
    prepare([str(corpus)], str(tmp_path / "one"), tokenizer, chunk_mb=0.01, workers=1, progress=False)
    prepare([str(corpus)], str(tmp_path / "two"), tokenizer, chunk_mb=0.01, workers=2, progress=False)
    assert shards(tmp_path / "one") == shards(tmp_path / "two")
    one, two = (json.loads((tmp_path / d / MANIFEST).read_text()) for d in ("one", "two"))
    assert one["shards"] == two["shards"]


def test_an_interrupted_preparation_resumes_skipping_finished_shards(tmp_path, corpus, tokenizer):
    out = tmp_path / "shards"
    full = prepare([str(corpus)], str(out), tokenizer, chunk_mb=0.01, progress=False)
    reference = shards(out)
    # as if killed while the last shard was being written: the manifest has not recorded it yet
    manifest = json.loads((out / MANIFEST).read_text())
    last = manifest["shards"].pop()
    manifest["doneChunks"].remove(last["chunk"])
    manifest["complete"] = False
    (out / MANIFEST).write_text(json.dumps(manifest))
    (out / last["file"]).rename(out / (last["file"] + ".tmp"))
    with pytest.raises(ConfigError, match=r"manifest\.json is incomplete"):
        load_tokens(DataConfig(source=str(out), seqLen=16), vocab_size=320, seed=0)
    finished = out / full["shards"][0]["file"]
    os.utime(finished, ns=(1, 1))  # a rewrite would change this

    resumed = prepare([str(corpus)], str(out), tokenizer, chunk_mb=0.01, progress=False)
    assert resumed["shards"] == full["shards"] and resumed["complete"]
    assert shards(out) == reference and finished.stat().st_mtime_ns == 1
    assert not list(out.glob("*.tmp"))


def test_an_output_directory_of_another_plan_is_refused(tmp_path, corpus, tokenizer):
    out = tmp_path / "shards"
    prepare([str(corpus)], str(out), tokenizer, chunk_mb=0.01, progress=False)
    with pytest.raises(PrepareError, match="other inputs, options or tokenizer"):
        prepare([str(corpus / "a.txt")], str(out), tokenizer, chunk_mb=0.01, progress=False)


def test_the_command_line_prints_a_summary_and_shows_progress_on_stderr(tmp_path, corpus, tokenizer):
    out = tmp_path / "shards"
    cmd = [sys.executable, "-m", "llmtrain_trainer.prepare", "--tokenizer", tokenizer, "--out", str(out)]
    proc = subprocess.run(
        [*cmd, "--workers", "1", "--chunk-mb", "0.01", str(corpus)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["shards"] == len(json.loads((out / MANIFEST).read_text())["shards"]) and summary["tokens"] > 0
    assert "prepare [" in proc.stderr and "100.0%" in proc.stderr
    bad = subprocess.run([*cmd, str(tmp_path / "nothing-here")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no such file" in bad.stderr


def test_text_without_line_breaks_is_read_in_bounded_pieces_and_loses_nothing(tmp_path, tokenizer, monkeypatch):
    """A text line longer than MAX_LINE_BYTES is cut at a space, also where it crosses a chunk boundary."""
    monkeypatch.setattr(prepare_module, "MAX_LINE_BYTES", 256)
    text = english_like(3000, seed=5).replace("\n", " ")  # one ~16 KB line
    (tmp_path / "one-line.txt").write_text(text)
    manifest = prepare(
        [str(tmp_path / "one-line.txt")], str(tmp_path / "out"), tokenizer, chunk_mb=0.002, progress=False
    )
    assert len(manifest["shards"]) == 1  # a line is never split between shards
    ids = np.concatenate([np.fromfile(tmp_path / "out" / s["file"], dtype="<u2") for s in manifest["shards"]])
    tok = Tokenizer.from_file(tokenizer)
    assert ids[-1] == tok.token_to_id("<|endoftext|>") and tok.decode(ids[:-1].tolist()) == text
