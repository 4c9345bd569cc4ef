"""model.init and checkpoint.export as the trainer resolves them, without starting processes: the shape is the
HF config.json's, a directory that is not a HF Llama is a ConfigError naming model.init before anything is
built, and the export goes under checkpoint.dir with the data.tokenizer files when they are there."""

from __future__ import annotations

import json

import pytest
from hf_runs import TINY_HF, tiny_hf_model
from llmtrain_trainer.build import checked_model_args
from llmtrain_trainer.config import CheckpointConfig, ConfigError, DataConfig, TrainerConfig
from llmtrain_trainer.hf_job import EXPORT_DIR, export_dir, export_tokenizer
from llmtrain_trainer.parallelize import ParallelDims

pytest.importorskip("transformers")

ONE_RANK = ParallelDims(1, 1, 1, "fsdp", "zero3")


def config(init, seq_len: int = 128) -> TrainerConfig:
    return TrainerConfig.model_validate(
        {"model": {"init": str(init)}, "data": {"seqLen": seq_len}, "training": {"steps": 1, "globalBatchSize": 1}}
    )


def test_the_shape_is_the_hugging_face_configs_with_a_rope_table_as_long_as_the_data(tmp_path):
    tiny_hf_model(tmp_path / "hf")
    args = checked_model_args(config(tmp_path / "hf", seq_len=128), ONE_RANK)
    assert (args.dim, args.n_heads, args.n_kv_heads, args.vocab_size) == (64, 4, 2, TINY_HF["vocab_size"])
    assert args.rope_theta == 50000.0 and args.max_seq_len == 128  # the HF config says 64
    assert checked_model_args(config(tmp_path / "hf", seq_len=16), ONE_RANK).max_seq_len == 64


def test_what_is_not_a_hugging_face_llama_is_a_config_error_naming_model_init(tmp_path):
    with pytest.raises(ConfigError, match=r"^model\.init: .*nowhere is not a directory"):
        checked_model_args(config(tmp_path / "nowhere"), ONE_RANK)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"^model\.init: .*config\.json: not found"):
        checked_model_args(config(tmp_path / "empty"), ONE_RANK)
    (tmp_path / "empty" / "config.json").write_text(json.dumps({**TINY_HF, "model_type": "llama"}))
    with pytest.raises(ConfigError, match=r"^model\.init: .*neither model\.safetensors nor"):
        checked_model_args(config(tmp_path / "empty"), ONE_RANK)
    (tmp_path / "empty" / "config.json").write_text(json.dumps({**TINY_HF, "model_type": "gpt2"}))
    with pytest.raises(ConfigError, match=r"^model\.init: model_type: 'gpt2' is not supported"):
        checked_model_args(config(tmp_path / "empty"), ONE_RANK)


def test_tensor_parallelism_is_checked_against_the_imported_shape(tmp_path):
    tiny_hf_model(tmp_path / "hf")
    with pytest.raises(ConfigError, match=r"parallelism\.tensorParallel: 3 does not divide model\.heads \(4\)"):
        checked_model_args(config(tmp_path / "hf"), ParallelDims(1, 1, 3, "fsdp", "zero3"))


def test_the_export_goes_under_the_checkpoint_directory_only_when_asked(tmp_path):
    assert export_dir(CheckpointConfig(dir=str(tmp_path))) is None
    assert export_dir(CheckpointConfig(dir=str(tmp_path), export="huggingface")) == tmp_path / EXPORT_DIR


def test_the_export_takes_the_hf_tokenizers_files_when_they_are_there(tmp_path):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    (tmp_path / "mine.json").write_text("{}")
    assert export_tokenizer(DataConfig(tokenizer=f"hf:{tmp_path / 'tok' / 'tokenizer.json'}")) == tmp_path / "tok"
    assert export_tokenizer(DataConfig(tokenizer=f"hf:{tmp_path / 'mine.json'}")) == tmp_path / "mine.json"
    assert export_tokenizer(DataConfig(tokenizer=f"hf:{tmp_path / 'gone.json'}")) is None  # never fails the run
    assert export_tokenizer(DataConfig(tokenizer="byte")) is None
