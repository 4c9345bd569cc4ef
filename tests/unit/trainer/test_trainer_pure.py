"""Pure parts of the trainer: shapes, FLOPs, schedule, data order, mesh sizes, checkpoint discovery."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from llmtrain_contract.presets import PRESETS
from llmtrain_trainer.checkpoint import (
    COMPLETE_MARKER,
    complete_checkpoints,
    latest_checkpoint,
    prune,
    remove_incomplete,
)
from llmtrain_trainer.config import ConfigError, DataConfig, ModelConfig, ParallelismConfig, ScheduleConfig
from llmtrain_trainer.data import BatchSampler, load_tokens, synthetic_tokens, tokenizer_vocab
from llmtrain_trainer.metrics import peak_flops
from llmtrain_trainer.model import count_params, flops_per_token, resolve_model_args
from llmtrain_trainer.optim import lr_factor
from llmtrain_trainer.parallelize import ParallelDims, parallel_dims


def test_llama_1b_preset_has_tinyllamas_parameter_count():
    total, _ = count_params(PRESETS["llama-1b"])
    assert total == 1_100_048_384


def test_llama_8b_preset_has_llama3_8bs_parameter_count():
    total, _ = count_params(PRESETS["llama-8b"])
    assert total == 8_030_261_248


def test_flops_per_token_is_six_times_non_embedding_params_plus_attention():
    args = PRESETS["llama-1b"]
    _, non_embedding = count_params(args)
    assert non_embedding == 1_100_048_384 - 32000 * 2048  # the untied output projection counts
    assert flops_per_token(args, 2048) == 6 * non_embedding + 12 * 22 * 2048 * 2048


def test_tied_embeddings_count_once():
    total, non_embedding = count_params(PRESETS["gpt2-124m"])
    assert total - non_embedding == 50304 * 768


def test_explicit_fields_override_the_preset_and_the_tokenizer_fills_the_vocabulary():
    args = resolve_model_args(ModelConfig(preset="tiny", kvHeads=2), seq_len=32, tokenizer_vocab=None)
    assert (args.dim, args.n_heads, args.n_kv_heads, args.vocab_size) == (64, 4, 2, 512)
    custom = resolve_model_args(ModelConfig(dim=96, layers=1, heads=3), seq_len=128, tokenizer_vocab=256)
    assert (custom.vocab_size, custom.n_kv_heads, custom.max_seq_len, custom.ffn_dim) == (256, 3, 128, 256)


def test_bin_data_without_preset_or_vocab_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model\.vocabSize"):
        resolve_model_args(ModelConfig(dim=64, layers=1, heads=4), seq_len=32, tokenizer_vocab=None)


@pytest.mark.parametrize(
    ("decay", "expected_mid", "expected_end"),
    [("cosine", 0.55, 0.1), ("linear", 0.55, 0.1), ("constant", 1.0, 1.0)],
)
def test_schedule_warms_up_linearly_then_decays_to_the_floor(decay, expected_mid, expected_end):
    cfg = ScheduleConfig(warmupSteps=10, decay=decay, minLrRatio=0.1)
    assert [lr_factor(s, 111, cfg) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor(10, 111, cfg) == pytest.approx(1.0)
    assert lr_factor(60, 111, cfg) == pytest.approx(expected_mid)
    assert lr_factor(110, 111, cfg) == pytest.approx(expected_end)


def test_global_batch_is_the_same_whatever_the_number_of_data_parallel_ranks():
    tokens = synthetic_tokens(512, seed=1)
    single = BatchSampler(tokens, 16, 8, dp_rank=0, dp_size=1, seed=1)
    halves = [BatchSampler(tokens, 16, 8, dp_rank=r, dp_size=2, seed=1) for r in range(2)]
    for _ in range(3):
        x, y = single.next_batch()
        parts = [s.next_batch() for s in halves]
        assert np.array_equal(x, np.concatenate([p[0] for p in parts]))
        assert np.array_equal(y[:, :-1], x[:, 1:])


def test_sampler_position_round_trips_through_its_state():
    tokens = synthetic_tokens(512, seed=1)
    original = BatchSampler(tokens, 16, 4, 0, 1, seed=3)
    original.next_batch()
    restored = BatchSampler(tokens, 16, 4, 0, 1, seed=3)
    restored.load_state_dict(original.state_dict())
    assert np.array_equal(original.next_batch()[0], restored.next_batch()[0])


def test_synthetic_stream_is_learnable_most_successors_are_fixed():
    tokens = synthetic_tokens(64, seed=0)
    pairs = {}
    for a, b in itertools.pairwise(tokens):
        pairs.setdefault(int(a), []).append(int(b))
    top_share = np.mean([max(np.bincount(v)) / len(v) for v in pairs.values()])
    assert top_share > 0.85


@pytest.mark.parametrize(
    ("parallelism", "world", "local", "expected"),
    [
        ({"dataParallel": "ddp"}, 8, 8, (8, 1, 1)),
        ({"dataParallel": "fsdp", "sharding": "zero3"}, 8, 8, (1, 8, 1)),
        ({"dataParallel": "fsdp", "sharding": "zero2", "tensorParallel": 2}, 8, 8, (1, 4, 2)),
        ({"dataParallel": "fsdp", "sharding": "hybrid"}, 16, 8, (2, 8, 1)),
        ({"dataParallel": "fsdp", "sharding": "hybrid", "tensorParallel": 4}, 16, 8, (2, 2, 4)),
    ],
)
def test_mesh_sizes(parallelism, world, local, expected):
    dims = parallel_dims(ParallelismConfig(**parallelism), world_size=world, local_world_size=local)
    assert isinstance(dims, ParallelDims)
    assert (dims.dp_replicate, dims.dp_shard, dims.tp) == expected
    assert dims.world_size == world


def test_an_unset_sharding_builds_zero3_on_every_rank():
    """A trainer run outside the operator (which renders its choice into the config) reads unset as zero3; ranks
    never choose by themselves, so they cannot disagree."""
    dims = parallel_dims(ParallelismConfig(dataParallel="fsdp"), world_size=8, local_world_size=8)
    assert dims == ParallelDims(1, 8, 1, "fsdp", "zero3")
    assert parallel_dims(ParallelismConfig(dataParallel="ddp"), world_size=8, local_world_size=8).sharding == "zero3"


def test_tensor_parallel_must_fit_in_a_node():
    with pytest.raises(ConfigError, match=r"parallelism\.tensorParallel"):
        parallel_dims(ParallelismConfig(tensorParallel=16), world_size=16, local_world_size=8)


def test_peak_flops_table_and_override():
    assert peak_flops("NVIDIA H200", None) == 989e12
    assert peak_flops("NVIDIA H100 PCIe", None) == 756e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", None) == 312e12
    assert peak_flops(None, None) is None
    assert peak_flops("NVIDIA H200", 5e14) == 5e14


def make_checkpoint_dir(root: Path, step: int, complete: bool = True, tmp: bool = False) -> Path:
    """step-N (or step-N.tmp), with its .complete marker unless `complete` is False."""
    path = root / (f"step-{step:08d}" + (".tmp" if tmp else ""))
    path.mkdir()
    if complete:
        (path / COMPLETE_MARKER).write_text("{}")
    return path


def test_latest_checkpoint_ignores_tmp_and_unmarked_directories(tmp_path):
    make_checkpoint_dir(tmp_path, 10)
    make_checkpoint_dir(tmp_path, 20)
    make_checkpoint_dir(tmp_path, 30, tmp=True)
    make_checkpoint_dir(tmp_path, 40, complete=False)
    (tmp_path / "step-50-notes").mkdir()
    assert latest_checkpoint(tmp_path) == (20, tmp_path / "step-00000020")
    assert latest_checkpoint(tmp_path / "missing") is None


def test_prune_keeps_the_newest_complete_checkpoints(tmp_path):
    for step in (10, 20, 30, 40):
        make_checkpoint_dir(tmp_path, step)
    prune(tmp_path, keep=2)
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [30, 40]


def test_interrupted_saves_are_cleaned_up_and_complete_ones_kept(tmp_path):
    keep = make_checkpoint_dir(tmp_path, 10)
    make_checkpoint_dir(tmp_path, 20, tmp=True)  # marker written, crash before the rename
    make_checkpoint_dir(tmp_path, 30, complete=False)
    removed = remove_incomplete(tmp_path)
    assert sorted(p.name for p in removed) == ["step-00000020.tmp", "step-00000030"]
    assert [p.name for p in tmp_path.iterdir()] == [keep.name]


def test_text_file_is_byte_tokenised_and_bin_file_memory_mapped(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("héllo " * 20)
    tokens = load_tokens(DataConfig(source=str(text), seqLen=8), vocab_size=512, seed=0)
    assert list(tokens[:3]) == list("héllo".encode()[:3])
    assert tokenizer_vocab(DataConfig(source=str(text))) == 256
    binary = tmp_path / "tokens.bin"
    np.arange(1000, dtype=np.uint32).tofile(binary)
    mapped = load_tokens(DataConfig(source=str(binary), binDtype="uint32", seqLen=8), vocab_size=2000, seed=0)
    assert isinstance(mapped, np.memmap) and mapped[999] == 999


def test_missing_data_file_and_unknown_tokenizer_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.source"):
        load_tokens(DataConfig(source=str(tmp_path / "nope.txt")), vocab_size=512, seed=0)
    with pytest.raises(ConfigError, match=r"data\.tokenizer"):
        tokenizer_vocab(DataConfig(source=str(tmp_path / "x.txt"), tokenizer="sentencepiece"))
