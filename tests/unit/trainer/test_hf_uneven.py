"""Uneven FSDP x TP (data-parallel degree 3, TP 2; 6 ranks on gloo/CPU): parameters are _StridedShard DTensors
with unequal shards, where set_model_state_dict's distribute_tensor used to fail with a bare AssertionError.
The per-parameter shard copy (hf_checkpoint.fill_parameters) fills them for both HF import and the trainer's
own initialisation, which then trains like one process does."""

from __future__ import annotations

import pytest
from hf_runs import LOGITS_ATOL, hf_logits, run_scenario, tiny_hf_model
from trainer_runs import BASE_CONFIG, merged, run_trainer

STEPS = 3


def test_hf_import_into_fsdp3_x_tp2_and_export_back_give_transformers_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = tiny_hf_model(tmp_path / "hf")
    out = tmp_path / "export"
    result = run_scenario("export", "fsdp3_tp2", tmp_path, hf=str(tmp_path / "hf"), export=str(out))
    expected = hf_logits(hf)
    assert (result["logits"] - expected).abs().max().item() <= LOGITS_ATOL
    exported = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    assert (hf_logits(exported) - expected).abs().max().item() <= LOGITS_ATOL


def test_the_trainer_initialises_and_trains_fsdp3_x_tp2_like_one_process(tmp_path):
    base = merged(
        BASE_CONFIG,
        {"training": {"steps": STEPS, "globalBatchSize": 6}, "schedule": {"warmupSteps": 1}},
    )
    uneven = merged(base, {"parallelism": {"dataParallel": "fsdp", "sharding": "zero3", "tensorParallel": 2}})
    single = run_trainer(base, tmp_path / "single")
    run = run_trainer(uneven, tmp_path / "uneven", nproc=6)
    assert single.returncode == 0, single.explain()
    assert run.returncode == 0, run.explain()
    assert run.of("start")[0]["mesh"] == [1, 3, 2]
    for step, loss in single.losses.items():
        assert run.losses[step] == pytest.approx(loss, abs=1e-3), f"step {step}"
