"""model.init (start from a Hugging Face Llama): its config.json is the whole shape, so the spec states none of it,
and every check that needs the shape before the trainer has read that file skips it."""

from __future__ import annotations

import re

import pytest
from llmtrain_contract.config import CheckpointConfig
from llmtrain_contract.errors import ConfigError
from llmtrain_contract.presets import resolve_shape, resolved_fields, shape_known, tensor_parallel_dims
from llmtrain_contract.rules import (
    CEL_INIT_ALONE,
    CEL_PRESET_OR_DIMS,
    MODEL_SHAPE_FIELDS,
    init_conflicts,
    missing_model_dims,
    tensor_parallel_problems,
)
from llmtrain_contract.sections import ModelSection
from pydantic import ValidationError


def test_init_alone_is_a_complete_model_section():
    section = ModelSection.model_validate({"init": "/models/llama"})
    assert section.init == "/models/llama" and section.preset is None
    assert missing_model_dims(None, {"dim": None}, init="/models/llama") == []


@pytest.mark.parametrize(
    ("extra", "named"),
    [({"preset": "tiny"}, "model.preset"), ({"dim": 64, "tieEmbeddings": False}, "model.dim, model.tieEmbeddings")],
)
def test_init_refuses_a_second_statement_of_the_shape(extra, named):
    message = re.escape(f"model.init takes the shape from its config.json: unset {named}")
    with pytest.raises(ValidationError, match=message):
        ModelSection.model_validate({"init": "/models/llama", **extra})


def test_without_init_a_preset_or_dimensions_are_still_required():
    with pytest.raises(ValidationError, match=r"set model\.init or model\.preset, or give model layers, heads"):
        ModelSection.model_validate({"dim": 64})


def test_the_cel_rules_say_what_the_python_rules_say():
    assert CEL_PRESET_OR_DIMS["rule"].startswith("has(self.init) || has(self.preset)")
    wire_names = {field.alias or name for name, field in ModelSection.model_fields.items()} - {"init"}
    assert set(MODEL_SHAPE_FIELDS) == wire_names, "every shape field of ModelSection must be in CEL_INIT_ALONE"
    for name in MODEL_SHAPE_FIELDS:
        assert f"has(self.{name})" in CEL_INIT_ALONE["rule"]
    assert init_conflicts("/m", {"heads": 4, "dim": None}) == ["heads"] and init_conflicts(None, {"heads": 4}) == []


def test_the_shape_of_an_init_model_is_unknown_before_the_trainer_reads_it():
    section = ModelSection.model_validate({"init": "/models/llama"})
    fields = resolved_fields(section, seq_len=2048, tokenizer_vocab=None)
    assert not shape_known(fields) and set(fields.values()) == {None}
    assert tensor_parallel_problems(tensor_parallel_dims(fields), 8) == []  # nothing to check yet
    with pytest.raises(ConfigError, match=r"^model\.init: "):
        resolve_shape(section, seq_len=2048, tokenizer_vocab=None)
    assert shape_known(resolved_fields(ModelSection(preset="tiny"), seq_len=8, tokenizer_vocab=None))


def test_there_is_no_memory_estimate_before_the_shape_is_read():
    from llmtrain_contract.memory import config_from_spec
    from llmtrain_contract.sections import DataSection, ParallelismSection, TrainingSection

    section = ModelSection.model_validate({"init": "/models/llama"})
    training = TrainingSection(steps=1, global_batch_size=8)
    with pytest.raises(ConfigError, match=r"^model\.init: "):
        config_from_spec(
            section, DataSection(), ParallelismSection(), training, precision="bf16", nodes=1, procs_per_node=8
        )


def test_export_needs_a_checkpoint_directory_to_write_under():
    assert CheckpointConfig().export == "none"
    assert CheckpointConfig(dir="/c", export="huggingface").export == "huggingface"
    with pytest.raises(ValidationError, match=r"checkpoint\.export: writes under checkpoint\.dir"):
        CheckpointConfig(export="huggingface")
