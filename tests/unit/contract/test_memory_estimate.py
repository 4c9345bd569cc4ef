"""The memory preflight estimate (llmtrain_contract.memory): how each setting moves one rank's peak, and what fits.

Measured agreement with the trainer's real allocations is tests/unit/trainer/test_memory_estimate_vs_measured.py.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from llmtrain_contract.memory import (
    GIB,
    MemoryConfig,
    _fused_loss,
    _tensor_parallel_changes,
    config_from_spec,
    estimate_for_spec,
    estimate_memory,
    explain,
    loss_chunk_tokens,
    suggest_fit,
)
from llmtrain_contract.presets import PRESETS, ModelShape
from llmtrain_contract.sections import DataSection, ModelSection, ParallelismSection, TrainingSection

REPO = Path(__file__).resolve().parents[3]
H200 = 143_771 * 2**20  # nvidia-smi's total for one H200 (141 GB)
H100 = 81_559 * 2**20  # one H100 80 GB
LLAMA_1B, LLAMA_8B = PRESETS["llama-1b"], PRESETS["llama-8b"]


def est(shape: ModelShape = LLAMA_1B, **kw):
    """llama-1b on 8 ranks by default: small enough parameter shards that the backward (activations) is the peak."""
    kw.setdefault("seq_len", 2048)
    kw.setdefault("world_size", 8)
    return estimate_memory(shape, **kw)


def block_numel(s: ModelShape) -> int:
    return (
        2 * s.dim * s.n_heads * s.head_dim + 2 * s.dim * s.n_kv_heads * s.head_dim + 3 * s.dim * s.ffn_dim + 2 * s.dim
    )


def model_numel(s: ModelShape) -> int:
    return s.n_layers * block_numel(s) + s.vocab_size * s.dim * (1 if s.tie_embeddings else 2) + s.dim


# --- parameters, gradients, optimizer state ------------------------------------------------------------------------


def test_optimizer_state_is_two_fp32_values_per_parameter():
    assert est(world_size=1).optimizer_state == 2 * 4 * model_numel(LLAMA_1B)


def test_zero3_divides_parameters_by_the_data_parallel_degree():
    one, eight = est(world_size=1), est(world_size=8)
    # dims of llama-1b divide by 8: no padding
    assert eight.optimizer_state * 8 == one.optimizer_state
    assert eight.parameters * 8 == one.parameters


def test_fsdp_pads_each_parameter_to_whole_rows_per_rank():
    odd = replace(PRESETS["tiny"], vocab_size=515)  # embedding and output: 515 rows over 4 ranks -> 129 each
    padded = est(odd, world_size=4, seq_len=64).optimizer_state
    unpadded = est(replace(odd, vocab_size=516), world_size=4, seq_len=64).optimizer_state
    assert padded == unpadded


def test_ddp_replicates_the_model_on_every_rank():
    one, eight = est(data_parallel="ddp", world_size=1), est(data_parallel="ddp", world_size=8)
    assert eight.optimizer_state == one.optimizer_state


def test_ddp_keeps_gradient_buckets_as_large_as_the_gradients():
    assert est(data_parallel="ddp", world_size=1).communication >= 4 * model_numel(LLAMA_1B)


def test_hybrid_shards_only_within_a_node():
    hybrid = est(world_size=16, procs_per_node=8, sharding="hybrid")
    assert hybrid.optimizer_state == est(world_size=8, procs_per_node=8).optimizer_state


def test_zero2_keeps_every_gathered_block_from_forward_to_backward():
    zero2, zero3 = est(world_size=8, sharding="zero2"), est(world_size=8)
    n = block_numel(LLAMA_1B)
    assert zero2.communication - zero3.communication == 2 * (LLAMA_1B.n_layers - 2) * n  # bf16 copies


def test_fsdp_accumulation_keeps_gradients_sharded():
    """Every micro-batch is reduce-scattered: between micro-batches a rank holds its fp32 shard, as without
    accumulation, never the whole model's gradients."""
    accumulating = est(world_size=8, gradient_accumulation_steps=4)
    assert accumulating.gradients == accumulating.parameters  # one fp32 shard, as large as the master weights'
    assert accumulating.gradients < 4 * model_numel(LLAMA_1B) / 8 + 4 * 8 * LLAMA_1B.dim  # 1/8 (+ padding)


def test_ddp_accumulation_holds_the_whole_models_fp32_gradients():
    accumulating = est(world_size=8, data_parallel="ddp", gradient_accumulation_steps=4)
    assert accumulating.gradients == 4 * model_numel(LLAMA_1B)


def test_tensor_parallel_splits_matrices_but_not_norm_gains():
    s = LLAMA_1B
    norms = (2 * s.n_layers + 1) * s.dim
    tp2 = est(world_size=2, procs_per_node=2, data_parallel="ddp", tensor_parallel=2).optimizer_state
    assert tp2 == 8 * ((model_numel(s) - norms) // 2 + norms)


def test_the_trainers_fused_adamw_needs_no_temporary_on_any_device_but_foreach_would():
    tiny = dict(micro_batch_size=1, seq_len=8, world_size=1)
    for device_type in ("cuda", "cpu"):
        fused = est(device_type=device_type, **tiny)
        assert fused.phase != "optimizer step" or fused.optimizer_state == 2 * 4 * model_numel(LLAMA_1B)
    foreach = est(device_type="cpu", fused_optimizer=False, **tiny)
    assert foreach.phase == "optimizer step" and foreach.optimizer_state > 2 * 4 * model_numel(LLAMA_1B)


# --- activations and logits ------------------------------------------------------------------------------------------


def test_activations_grow_linearly_with_micro_batch_and_sequence():
    a1, a2 = est(micro_batch_size=1).activations, est(micro_batch_size=2).activations
    s1, s2 = est(seq_len=1024).activations, est(seq_len=2048).activations
    assert a2 == pytest.approx(2 * a1, rel=0.01)
    assert s2 == pytest.approx(2 * s1, rel=0.01)


def test_full_activation_checkpointing_keeps_one_input_per_block():
    deeper = replace(LLAMA_1B, n_layers=LLAMA_1B.n_layers + 10)
    kw = dict(activation_checkpointing="full", micro_batch_size=8)
    short, deep = est(**kw), est(deeper, **kw)
    assert short.phase == deep.phase == "backward"
    bsd = 8 * 2048 * LLAMA_1B.dim
    assert deep.activations - short.activations == 10 * 2 * bsd  # one bf16 block input per extra block


def test_selective_checkpointing_saves_less_than_none_and_more_than_full():
    none, sel, full = (est(activation_checkpointing=ac).activations for ac in ("none", "selective", "full"))
    assert full < sel < none


def test_selective_checkpointing_keeps_every_other_matmul_and_attention():
    """parallelize.SelectivePolicy: per block its input, the outputs of wq, wv, w1, w2 (1st, 3rd, 5th, 7th matmul)
    and SDPA's output and fp32 logsumexp; nothing else."""
    s = LLAMA_1B
    deeper = replace(s, n_layers=s.n_layers + 10)
    kw = dict(activation_checkpointing="selective", micro_batch_size=8)
    short, deep = est(**kw), est(deeper, **kw)
    assert short.phase == deep.phase == "backward"
    tokens = 8 * 2048
    q, kv = tokens * s.n_heads * s.head_dim, tokens * s.n_kv_heads * s.head_dim
    matmuls = q + kv + tokens * s.ffn_dim + tokens * s.dim  # wq, wv, w1, w2
    per_block = 2 * (tokens * s.dim + matmuls + q) + 4 * 8 * s.n_heads * 2048  # + input, SDPA output, logsumexp
    assert deep.activations - short.activations == 10 * per_block


def test_grouped_query_attention_saves_k_and_v_with_kv_heads_only():
    """SDPA's enable_gqa: no repeated K/V copies; K and V are saved with their kv heads."""
    s = LLAMA_1B
    mha = replace(s, n_kv_heads=s.n_heads)
    k_and_v = 2 * 2 * 2048 * (s.n_heads - s.n_kv_heads) * s.head_dim  # bf16, one micro-batch of 2048
    assert est(mha).activations - est(s).activations == s.n_layers * k_and_v


def test_fp32_saves_twice_the_activations_of_bf16():
    assert est(precision="fp32").activations == pytest.approx(2 * est().activations, rel=0.15)


def test_loss_chunks_follow_the_trainers_chunk_size():
    assert loss_chunk_tokens(32000) == 2097 and loss_chunk_tokens(128256) == 523
    assert loss_chunk_tokens(2**20) == 128  # never thinner than 128 tokens


def test_fused_loss_holds_one_chunk_of_logits_whatever_the_batch():
    """Without TP the logits exist a chunk at a time; what grows with the batch is the hidden states and their
    fp32 gradient (6 bytes per hidden element in bf16), never tokens x vocabulary."""
    s = LLAMA_1B
    small, large = est(micro_batch_size=2), est(micro_batch_size=8)  # both at least a whole chunk
    assert small.phase == large.phase == "backward"
    chunk_logits = loss_chunk_tokens(s.vocab_size) * s.vocab_size
    weight = s.vocab_size * s.dim
    bound = (2 * 2 + 4) * chunk_logits + 4 * weight + (4 + 2) * 8 * 2048 * s.dim
    assert large.logits_loss <= bound
    assert large.logits_loss - small.logits_loss == (4 + 2) * 6 * 2048 * s.dim
    assert 5 * large.logits_loss < 14 * 8 * 2048 * s.vocab_size  # the full-logits loss: 14 bytes per logit


def test_fused_loss_in_fp32_meets_two_chunks_only_when_there_are_two():
    one = _fused_loss(tokens=1000, vocab=32000, dim=64, c=4, h=4, w=4)
    two = _fused_loss(tokens=4000, vocab=32000, dim=64, c=4, h=4, w=4)
    chunk = loss_chunk_tokens(32000) * 32000
    # one chunk: its logits (softmax and gradient in place) and the weight-gradient product
    assert one.forward - 4 * (1000 * 64 + 32000 * 64) - 4 * 1000 * 64 == 4 * (1000 * 32000 + 32000 * 64)
    assert two.forward - 4 * (4000 * 64 + 32000 * 64) - 4 * 4000 * 64 == 2 * 4 * chunk


def test_fused_loss_keeps_the_output_weights_gradient_for_the_rest_of_backward():
    fsdp, ddp = est(world_size=1), est(world_size=1, data_parallel="ddp")
    weight = LLAMA_1B.vocab_size * LLAMA_1B.dim
    assert _fused_loss(2048, LLAMA_1B.vocab_size, LLAMA_1B.dim, 2, 2, 2).kept == 2 * weight  # FSDP: bf16
    assert _fused_loss(2048, LLAMA_1B.vocab_size, LLAMA_1B.dim, 2, 4, 4).kept == 4 * weight  # autocast: fp32
    assert fsdp.logits_loss > 0 and ddp.logits_loss > 0


def test_tensor_parallel_loss_runs_on_full_fp32_logits_unless_loss_parallel_splits_them():
    kw = dict(world_size=8, procs_per_node=8, tensor_parallel=8, micro_batch_size=1)
    gathered, split = est(loss_parallel=False, **kw), est(loss_parallel=True, **kw)
    btv = 2048 * LLAMA_1B.vocab_size
    assert gathered.logits_loss == btv * 4 * 4  # backward: the fp32 log-softmax and three fp32 temporaries
    assert split.logits_loss == gathered.logits_loss // 8


# --- totals, summary, spec -------------------------------------------------------------------------------------------


def test_total_adds_the_cuda_context_and_allocator_slack_to_the_allocated_peak():
    e = est()
    assert e.total - e.allocated >= GIB
    assert est(device_type="cpu").overhead == 0


def test_summary_is_one_line_in_gib_per_component():
    line = est(world_size=8).summary()
    assert "\n" not in line
    for part in ("params", "grads", "optim", "acts", "logits", "comm", "overhead", "GiB"):
        assert part in line


def test_spec_sections_give_the_same_estimate_as_the_explicit_call():
    spec = estimate_for_spec(
        ModelSection(preset="llama-1b"),
        DataSection(seq_len=2048),
        ParallelismSection(data_parallel="fsdp", sharding="zero3"),
        TrainingSection(steps=10, global_batch_size=64, micro_batch_size=2, activation_checkpointing="selective"),
        precision="bf16",
        nodes=2,
        procs_per_node=8,
    )
    explicit = est(
        world_size=16,
        procs_per_node=8,
        micro_batch_size=2,
        activation_checkpointing="selective",
        gradient_accumulation_steps=2,  # 64 / (2 x 16)
    )
    assert spec == explicit


def test_an_unset_sharding_is_estimated_as_zero3_the_trainers_reading_of_it():
    assert ParallelismSection().sharding is None and ParallelismSection().effective_sharding == "zero3"
    assert ParallelismSection(sharding="zero2").effective_sharding == "zero2"
    assert ParallelismSection().with_sharding("zero2").effective_sharding == "zero2"

    def cfg(parallelism: ParallelismSection) -> MemoryConfig:
        return config_from_spec(
            ModelSection(preset="llama-1b"),
            DataSection(seq_len=2048),
            parallelism,
            TrainingSection(steps=10, global_batch_size=16),
            precision="bf16",
            nodes=1,
            procs_per_node=8,
        )

    assert cfg(ParallelismSection()).sharding == "zero3"
    assert cfg(ParallelismSection()) == cfg(ParallelismSection(sharding="zero3"))


def test_unknown_vocabulary_without_a_preset_makes_a_lower_bound():
    cfg = config_from_spec(
        ModelSection(dim=512, layers=4, heads=8),
        DataSection(source="/data/corpus.txt", tokenizer="hf:/data/tokenizer.json"),
        ParallelismSection(),
        TrainingSection(steps=1, global_batch_size=8),
        precision="bf16",
        nodes=1,
        procs_per_node=8,
    )
    e = cfg.estimate()
    assert e.lower_bound and ">=" in e.summary() and "lower bound" in e.notes[0]


def test_a_known_tokenizer_gives_the_vocabulary_without_loading_it():
    cfg = config_from_spec(
        ModelSection(dim=512, layers=4, heads=8),
        DataSection(source="/data/corpus.txt", tokenizer="tiktoken:cl100k_base"),
        ParallelismSection(),
        TrainingSection(steps=1, global_batch_size=8),
        precision="bf16",
        nodes=1,
        procs_per_node=8,
    )
    assert cfg.shape.vocab_size == 100277 and not cfg.lower_bound


def test_estimator_imports_without_torch():
    code = "import sys, llmtrain_contract.memory; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- what fits ------------------------------------------------------------------------------------------------------


def eight_gpu_job(**kw) -> MemoryConfig:
    base = dict(
        shape=LLAMA_8B,
        world_size=8,
        procs_per_node=8,
        sharding="zero3",
        micro_batch_size=4,
        seq_len=8192,
        global_batch_size=32,
        activation_checkpointing="none",
    )
    return MemoryConfig(**{**base, **kw})


def test_suggests_a_smaller_micro_batch_first():
    cfg = eight_gpu_job()  # 4 x 8192 tokens without checkpointing: the activations dominate (about 194 GiB)
    assert not cfg.estimate().fits(H100)
    text = suggest_fit(cfg, H100)
    assert text is not None and text.startswith("training.microBatchSize 4 → 1")


def test_suggests_more_sharding_when_micro_batch_1_is_not_enough():
    cfg = eight_gpu_job(sharding="zero2", micro_batch_size=1, activation_checkpointing="full")
    budget = 35 * GIB  # zero2 needs about 40 GiB, zero3 27
    assert not cfg.estimate().fits(budget)
    assert suggest_fit(cfg, budget).startswith("parallelism.sharding zero2 → zero3")


def test_suggests_activation_checkpointing_when_activations_dominate():
    cfg = eight_gpu_job(micro_batch_size=1)  # about 68 GiB; selective 41, full 27
    text = suggest_fit(cfg, 60 * GIB)
    assert text.startswith("training.activationCheckpointing none → selective")
    assert suggest_fit(cfg, 35 * GIB).startswith("training.activationCheckpointing none → full")


def test_suggests_tensor_parallel_only_when_it_divides_the_model():
    odd_heads = replace(LLAMA_8B, n_heads=30, n_kv_heads=6, dim=3840)  # tp 4 and 8 do not divide 30 heads
    cfg = eight_gpu_job(shape=odd_heads, micro_batch_size=1, activation_checkpointing="full", sharding="zero3")
    options = [text for text, _ in _tensor_parallel_changes(cfg)]
    assert options == ["parallelism.tensorParallel 1 → 2"]


def test_a_job_that_fits_needs_no_change():
    assert suggest_fit(eight_gpu_job(shape=LLAMA_1B, micro_batch_size=1, seq_len=2048), H200) == "no change needed"


def test_llama_8b_on_one_h200_does_not_fit_and_says_why():
    """16 bytes per parameter (fp32 weights, gradients, two AdamW states) are 120 GiB before any activation."""
    cfg = MemoryConfig(shape=LLAMA_8B, world_size=1, procs_per_node=1, micro_batch_size=1, seq_len=8192)
    e = cfg.estimate()
    assert not e.fits(H200)
    why = explain(e, H200)
    assert why.startswith("needs 1") and "does not fit in 140.4 GiB" in why
    assert "optimizer state 59.8 GiB" in why


def test_nothing_fits_llama_8b_on_one_80gb_gpu():
    """One GPU: no sharding or tensor parallelism to add, and no checkpointing shrinks the optimizer state."""
    cfg = MemoryConfig(shape=LLAMA_8B, world_size=1, procs_per_node=1, micro_batch_size=1, seq_len=8192)
    assert suggest_fit(cfg, H100) is None


# --- against the recorded measurements ----------------------------------------------------------------------------


def test_estimates_stay_within_15_percent_of_the_recorded_measured_peaks():
    """bench/memory_reference.json holds the trainer's measured peaks for the validation grid (bench --record)."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import memory_estimate as bench
    finally:
        sys.path.remove(str(REPO / "bench"))
    recorded = bench.recorded_references()
    assert len(recorded) >= 6
    errors = {}
    for case in bench.GRID:
        if case.name in recorded:
            errors[case.name] = bench.estimate(case).allocated / recorded[case.name] - 1
    assert all(abs(e) <= 0.15 for e in errors.values()), errors
