"""Data at scale, as the trainer sees it: shard sets, weighted sources, the checks that name the file, the sampler.

Shards here are written directly (a few hundred tokens each) with the sidecar format `prepare` writes; the tool
itself is specified in test_trainer_prepare.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from llmtrain_trainer.config import ConfigError, DataConfig, TrainerConfig
from llmtrain_trainer.data import (
    MANIFEST,
    MANIFEST_FORMAT,
    SHARD_FORMAT,
    BatchSampler,
    Mixture,
    load_tokens,
    sidecar_path,
    tokenizer_vocab,
)
from llmtrain_trainer.evaluate import EvalSampler, eval_due, eval_sampler_for

SEQ = 8


def write_shard(path, ids, dtype="uint16", *, sidecar=True, vocab=1000, **overrides):
    """A .bin shard and (unless sidecar=False) its sidecar; overrides falsify the sidecar's fields."""
    arr = np.asarray(ids, dtype=dtype)
    arr.astype(np.dtype(dtype).newbyteorder("<")).tofile(path)
    meta = {"format": SHARD_FORMAT, "dtype": dtype, "tokens": len(arr), "maxId": int(arr.max()) if len(arr) else -1}
    meta |= {"vocabSize": vocab, **overrides}
    if sidecar:
        sidecar_path(path).write_text(json.dumps(meta))
    return meta


def write_set(directory, shards, dtype="uint16", complete=True):
    """A prepared directory: shard k filled with the value base + k, so a window tells which shard it came from."""
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for k, tokens in enumerate(shards):
        name = f"shard-{k:05d}.bin"
        entries.append({"file": name, "chunk": k, **write_shard(directory / name, tokens, dtype)})
    manifest = {"format": MANIFEST_FORMAT, "complete": complete, "chunks": len(shards), "shards": entries}
    (directory / MANIFEST).write_text(json.dumps(manifest))
    return directory


def data(source=None, **kw) -> DataConfig:
    return DataConfig(**({"source": str(source)} if source is not None else {}), seqLen=SEQ, **kw)


# ------------------------------------------------------------------------------------------------ shard sets


def test_a_prepared_directory_is_memory_mapped_shard_by_shard_in_manifest_order(tmp_path):
    root = write_set(tmp_path / "set", [np.full(100, 1), np.full(300, 2), np.full(50, 3)])
    stream = load_tokens(data(root), vocab_size=1000, seed=0)
    assert isinstance(stream, Mixture)
    (arrays,) = stream.sources
    assert [type(a) for a in arrays] == [np.memmap] * 3
    assert [len(a) for a in arrays] == [100, 300, 50] and stream.tokens == 450
    assert [int(a[0]) for a in arrays] == [1, 2, 3]


def test_the_manifest_file_itself_and_a_glob_of_shards_name_the_same_data(tmp_path):
    root = write_set(tmp_path / "set", [np.full(100, 1), np.full(100, 2)])
    by_manifest = load_tokens(data(root / MANIFEST), vocab_size=1000, seed=0)
    by_glob = load_tokens(data(f"{root}/shard-*.bin"), vocab_size=1000, seed=0)
    assert [int(a[0]) for a in by_manifest.sources[0]] == [int(a[0]) for a in by_glob.sources[0]] == [1, 2]


def test_a_uint32_shard_read_as_uint16_is_a_config_error_naming_the_file(tmp_path):
    write_shard(tmp_path / "big-vocab.bin", np.arange(200) + 70_000, "uint32", vocab=128_256)
    with pytest.raises(ConfigError, match=r"data\.source: .*big-vocab\.bin holds uint32 .* data\.binDtype is uint16"):
        load_tokens(data(tmp_path / "big-vocab.bin", binDtype="uint16"), vocab_size=128_256, seed=0)
    assert len(load_tokens(data(tmp_path / "big-vocab.bin"), vocab_size=128_256, seed=0)) == 200  # its own dtype


def test_a_bare_uint32_file_read_with_the_default_uint16_is_caught_not_trained_on(tmp_path):
    """No sidecar (a nanoGPT-style file): small uint32 ids leave every second 16-bit word 0, which is refused."""
    np.arange(1, 500, dtype="<u4").tofile(tmp_path / "legacy.bin")
    with pytest.raises(ConfigError, match=r"legacy\.bin looks like uint32 token ids read as uint16"):
        load_tokens(data(tmp_path / "legacy.bin"), vocab_size=1000, seed=0)
    assert int(load_tokens(data(tmp_path / "legacy.bin", binDtype="uint32"), vocab_size=1000, seed=0)[-1]) == 499


def test_ids_beyond_the_models_vocabulary_are_a_config_error_naming_the_file(tmp_path):
    """From the sidecar's recorded largest id (no scan), and by a chunked scan for a file without one."""
    root = write_set(tmp_path / "set", [np.full(100, 5), np.r_[np.zeros(99), 600]])
    with pytest.raises(ConfigError, match=r"shard-00001\.bin holds token id 600 but the model's vocabulary has 512"):
        load_tokens(data(root), vocab_size=512, seed=0)
    (tmp_path / "bare").mkdir()
    np.r_[np.full(150, 7), 513, np.full(10, 7)].astype("<u2").tofile(tmp_path / "bare" / "x.bin")
    with pytest.raises(ConfigError, match=r"x\.bin holds token id 513 \(at token 150\)"):
        load_tokens(data(tmp_path / "bare"), vocab_size=512, seed=0)


def test_empty_truncated_and_too_short_shards_are_config_errors_naming_the_file(tmp_path):
    write_shard(tmp_path / "empty.bin", [], vocab=1000)
    with pytest.raises(ConfigError, match=r"empty\.bin is empty"):
        load_tokens(data(tmp_path / "empty.bin"), vocab_size=1000, seed=0)
    write_shard(tmp_path / "cut.bin", np.arange(100), vocab=1000, tokens=200)
    with pytest.raises(ConfigError, match=r"cut\.bin is 200 bytes but its sidecar says 200 uint16 tokens"):
        load_tokens(data(tmp_path / "cut.bin"), vocab_size=1000, seed=0)
    root = write_set(tmp_path / "set", [np.full(100, 1), np.full(9, 2)])
    with pytest.raises(ConfigError, match=r"shard-00001\.bin has 9 tokens, fewer than data\.seqLen \+ 2 \(10\)"):
        load_tokens(data(root), vocab_size=1000, seed=0)


def test_a_shard_without_sidecar_in_a_prepared_directory_and_an_unfinished_manifest_are_refused(tmp_path):
    root = write_set(tmp_path / "set", [np.full(100, 1), np.full(100, 2)])
    sidecar_path(root / "shard-00001.bin").unlink()
    with pytest.raises(ConfigError, match=r"shard-00001\.bin has no sidecar"):
        load_tokens(data(f"{root}/*.bin"), vocab_size=1000, seed=0)
    unfinished = write_set(tmp_path / "half", [np.full(100, 1)], complete=False)
    with pytest.raises(ConfigError, match=r"half/manifest\.json is incomplete"):
        load_tokens(data(unfinished), vocab_size=1000, seed=0)


def test_nothing_there_is_a_config_error_naming_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.source: .*matches no files"):
        load_tokens(data(f"{tmp_path}/*.bin"), vocab_size=1000, seed=0)
    cfg = DataConfig(sources=[{"path": str(tmp_path / "a.bin")}, {"path": str(tmp_path / "missing"), "weight": 2}])
    with pytest.raises(ConfigError, match=r"data\.sources\[0\]\.path"):
        load_tokens(cfg, vocab_size=1000, seed=0)


def test_data_source_and_data_sources_exclude_each_other():
    with pytest.raises(ValueError, match=r"data\.source or data\.sources, not both"):
        DataConfig(source="/data/a", sources=[{"path": "/data/b"}])
    with pytest.raises(ValueError, match="greater than 0"):
        DataConfig(sources=[{"path": "/data/b", "weight": 0}])


def test_only_text_sources_ask_for_a_tokenizer_vocabulary(tmp_path):
    assert tokenizer_vocab(DataConfig(sources=[{"path": "/d/shards"}, {"path": "/d/wiki.txt"}])) == 256
    assert tokenizer_vocab(DataConfig(sources=[{"path": "/d/*.bin"}, {"path": str(tmp_path)}])) is None


# ------------------------------------------------------------------------------------------------ the sampler


def sampler(stream, *, rank=0, size=1, batch=8, seed=1, cls=BatchSampler, **kw):
    return cls(stream, SEQ, batch, dp_rank=rank, dp_size=size, seed=seed, **kw)


def test_one_file_draws_exactly_the_windows_it_drew_before_shards_existed():
    """Checkpoints of runs started before the shard sampler resume onto the same batches."""
    tokens = np.arange(5000)
    s = sampler(tokens)
    for step in (0, 7, 123):
        old = np.random.default_rng([1, step]).integers(0, len(tokens) - SEQ - 1, 8)
        assert np.array_equal(s.locate(step)[2], old)


def test_windows_never_cross_a_shard_and_shards_count_by_their_tokens(tmp_path):
    root = write_set(tmp_path / "set", [np.full(1000, 1), np.full(3000, 2)])
    s = sampler(load_tokens(data(root), vocab_size=1000, seed=0), batch=64)
    rows = np.concatenate([s.next_batch()[0] for _ in range(40)])
    assert all(len(set(r.tolist())) == 1 for r in rows)  # one shard's value per window
    share_of_big = np.mean(rows[:, 0] == 2)
    assert share_of_big == pytest.approx((3000 - SEQ - 1) / (4000 - 2 * (SEQ + 1)), abs=0.04)


def test_weighted_sources_share_each_batch_by_weight(tmp_path):
    web = write_set(tmp_path / "web", [np.full(500, 1)])
    code = write_set(tmp_path / "code", [np.full(5000, 2), np.full(5000, 3)])
    cfg = DataConfig(seqLen=SEQ, sources=[{"path": str(web), "weight": 3}, {"path": str(code), "weight": 1}])
    s = sampler(load_tokens(cfg, vocab_size=1000, seed=0), batch=64)
    first = np.concatenate([s.next_batch()[0][:, 0] for _ in range(50)])
    assert np.mean(first == 1) == pytest.approx(0.75, abs=0.03)  # 10x fewer tokens, 3x the weight


def test_a_mixtures_batches_depend_only_on_seed_and_step_not_on_ranks_or_history(tmp_path):
    a = write_set(tmp_path / "a", [np.arange(400) % 97, np.arange(700) % 89])
    b = write_set(tmp_path / "b", [np.arange(900) % 83])
    cfg = DataConfig(seqLen=SEQ, sources=[{"path": str(a), "weight": 2}, {"path": str(b)}])
    stream = load_tokens(cfg, vocab_size=1000, seed=0)
    single = sampler(stream)
    quarters = [sampler(stream, rank=r, size=4) for r in range(4)]
    batches = []
    for _ in range(5):
        x, _ = single.next_batch()
        assert np.array_equal(x, np.concatenate([q.next_batch()[0] for q in quarters]))
        batches.append(x)
    resumed = sampler(stream)
    resumed.load_state_dict({"step": 3, "seed": 1})
    assert np.array_equal(resumed.next_batch()[0], batches[3])


# ---------------------------------------------------------------------------------------------- evaluation


def test_evaluation_reads_the_same_held_out_windows_every_time_whatever_the_ranks(tmp_path):
    held_out = write_set(tmp_path / "val", [np.arange(3000) % 251])
    one = sampler(load_tokens(data(held_out), vocab_size=1000, seed=0), cls=EvalSampler, batches=3)
    first = [x for x, _ in one]
    assert len(first) == 3 and not np.array_equal(first[0], first[1])
    assert all(np.array_equal(x, y) for (x, _), y in zip(one, first, strict=True))  # a second evaluation
    halves = [sampler(one.tokens, rank=r, size=2, cls=EvalSampler, batches=3) for r in range(2)]
    for i, (a, b) in enumerate(zip(*halves, strict=True)):
        assert np.array_equal(np.concatenate([a[0], b[0]]), first[i])


def test_evaluation_source_is_checked_at_start_up_naming_evaluation_source(tmp_path):
    bad = write_set(tmp_path / "val", [np.full(100, 900)])
    cfg = TrainerConfig.model_validate(
        {
            "model": {"preset": "tiny"},
            "data": {"seqLen": SEQ},
            "training": {"steps": 10, "globalBatchSize": 4},
            "evaluation": {"source": str(bad), "interval": 5, "batches": 2},
        }
    )
    with pytest.raises(ConfigError, match=r"evaluation\.source: .*shard-00000\.bin holds token id 900"):
        eval_sampler_for(cfg, vocab_size=512, dp_rank=0, dp_size=1)
    assert [s for s in range(1, 11) if eval_due(s, 10, cfg)] == [5, 10]
    assert eval_sampler_for(cfg.model_copy(update={"evaluation": None}), vocab_size=512, dp_rank=0, dp_size=1) is None
