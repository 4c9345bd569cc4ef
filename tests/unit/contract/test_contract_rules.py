"""The cross-field rules both sides apply: each names the field the user must change."""

from __future__ import annotations

from llmtrain_contract.presets import PRESETS, ModelShape, resolve_shape, resolved_fields, tensor_parallel_dims
from llmtrain_contract.rules import (
    accumulation_steps,
    batch_problem,
    describe,
    shape_problems,
    tensor_parallel_problems,
    warmup_problem,
)
from llmtrain_contract.sections import ModelSection


def test_global_batch_must_be_whole_micro_batches_on_every_data_parallel_rank():
    assert batch_problem(16, 2, 8) is None
    assert accumulation_steps(32, 2, 8) == 2
    field, message = batch_problem(12, 2, 8)
    assert field == "training.globalBatchSize" and "(2 x 8 = 16)" in message


def test_warmup_must_end_before_training_does():
    assert warmup_problem(0, 1) is None and warmup_problem(9, 10) is None
    assert warmup_problem(10, 10)[0] == "schedule.warmupSteps"


def test_tensor_parallel_names_each_dimension_it_cannot_split_and_kv_heads_equal_to_heads_once():
    dims = {"heads": 6, "kvHeads": 6, "ffnDim": 131, "vocabSize": None}
    problems = tensor_parallel_problems(dims, 4)
    assert [message for _, message in problems] == [
        "4 does not divide model.heads (6)",
        "4 does not divide model.ffnDim (131)",
    ]
    assert {field for field, _ in problems} == {"parallelism.tensorParallel"}


def test_a_preset_resolves_the_same_shape_for_operator_and_trainer():
    section = ModelSection(preset="llama-1b")
    fields = resolved_fields(section, seq_len=2048, tokenizer_vocab=None)
    assert tensor_parallel_dims(fields) == {"heads": 32, "kvHeads": 4, "ffnDim": 5632, "vocabSize": 32000}
    assert resolve_shape(section, seq_len=2048, tokenizer_vocab=None) == PRESETS["llama-1b"]


def test_overriding_heads_on_a_preset_makes_kv_heads_follow_unless_given():
    assert resolve_shape(ModelSection(preset="tiny", heads=8), seq_len=8, tokenizer_vocab=None).n_kv_heads == 8
    assert (
        resolve_shape(ModelSection(preset="tiny", heads=8, kvHeads=2), seq_len=8, tokenizer_vocab=None).n_kv_heads == 2
    )


def test_rope_theta_and_norm_eps_can_be_set_without_a_preset():
    section = ModelSection(dim=64, layers=1, heads=4, ropeTheta=50000.0, normEps=1e-6)
    shape = resolve_shape(section, seq_len=16, tokenizer_vocab=300)
    assert (shape.rope_theta, shape.norm_eps, shape.vocab_size) == (50000.0, 1e-6, 300)
    assert PRESETS["llama-8b"].rope_theta == 500000.0


def test_shapes_the_model_cannot_build_are_named():
    bad = ModelShape(dim=60, n_layers=1, n_heads=8, n_kv_heads=3, ffn_dim=64, vocab_size=10, max_seq_len=8)
    assert describe(shape_problems(bad)) == (
        "model.dim: 60 is not divisible by model.heads 8; model.kvHeads: 3 does not divide model.heads 8"
    )
