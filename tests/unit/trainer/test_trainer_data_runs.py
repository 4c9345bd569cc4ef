"""Real trainer runs on prepared shards: bad data exits 78 naming the file; validation loss is measured and exported."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest
from english_like import english_like, train_tokenizer
from llmtrain_operator.progress import parse_progress
from llmtrain_trainer.prepare import prepare
from test_trainer_bad_config import _assert_permanent_config_failure
from trainer_runs import BASE_CONFIG, free_port, merged, run_trainer


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Training and held-out shard sets of synthetic English-like text, tokenised with a 320-id BPE."""
    root = tmp_path_factory.mktemp("prepared")
    tokenizer = train_tokenizer(root / "tokenizer.json")
    for name, seed, words in (("train", 1, 30_000), ("val", 2, 3_000)):
        (root / f"{name}.txt").write_text(english_like(words, seed=seed))
        prepare([str(root / f"{name}.txt")], str(root / name), tokenizer, chunk_mb=0.05, progress=False)
    return root


def test_a_uint32_shard_read_as_uint16_exits_78_naming_the_file(tmp_path, prepared):
    out = tmp_path / "wide"
    prepare([str(prepared / "val.txt")], str(out), str(prepared / "tokenizer.json"), dtype="uint32", progress=False)
    config = merged(BASE_CONFIG, {"data": {"source": str(out), "binDtype": "uint16"}})
    run = run_trainer(config, tmp_path / "run")
    _assert_permanent_config_failure(run, "shard-00000.bin holds uint32 token ids")


def test_token_ids_beyond_the_vocabulary_exit_78_naming_the_file(tmp_path, prepared):
    config = merged(BASE_CONFIG, {"data": {"source": str(prepared / "train")}, "model": {"vocabSize": 100}})
    run = run_trainer(config, tmp_path / "run")
    _assert_permanent_config_failure(run, "shard-00000.bin holds token id")
    assert "the model's vocabulary has 100 ids" in run.termination_message["message"]


@pytest.fixture(scope="module")
def eval_runs(prepared, tmp_path_factory):
    """Two layouts (FSDP ZeRO-3 and tensor parallel 2, 2 processes each) on a weighted mixture, evaluating on val."""
    runs = {}
    for name, parallelism in (("zero3", {"dataParallel": "fsdp"}), ("tp2", {"tensorParallel": 2})):
        config = merged(
            BASE_CONFIG,
            {
                "parallelism": parallelism,
                "data": {"sources": [{"path": str(prepared / "train"), "weight": 3}, {"path": str(prepared / "val")}]},
                "evaluation": {"source": str(prepared / "val"), "interval": 5, "batches": 2},
            },
        )
        runs[name] = run_trainer(config, tmp_path_factory.mktemp(name), nproc=2)
    return runs


def test_training_on_a_mixture_reports_validation_loss_at_each_interval_and_at_the_end(eval_runs):
    run = eval_runs["zero3"]
    assert run.returncode == 0, run.explain()
    evals = run.of("eval")
    assert [e["step"] for e in evals] == [5, 10, 12]
    assert all(e["perplexity"] == pytest.approx(np.exp(e["loss"]), rel=1e-3) for e in evals)
    assert evals[-1]["loss"] < evals[0]["loss"] < np.log(512)  # it learns, and beats uniform guessing
    # The final evaluation outlives the metrics endpoint: the exit summary carries it to status.progress.
    assert run.termination_message["evalLoss"] == pytest.approx(evals[-1]["loss"], abs=1e-5)


def test_validation_loss_does_not_depend_on_the_layout(eval_runs):
    """Same held-out windows, same weights: tensor parallelism (loss on sharded logits) measures the same loss."""
    assert eval_runs["tp2"].returncode == 0, eval_runs["tp2"].explain()
    losses = {name: [e["loss"] for e in run.of("eval")] for name, run in eval_runs.items()}
    assert losses["tp2"] == pytest.approx(losses["zero3"], abs=1e-3)


def test_rank_zeros_validation_loss_reaches_the_operators_progress():
    from llmtrain_trainer.metrics import Metrics

    port = free_port()
    metrics = Metrics(job="j", node_rank=0, port=port, serve=True, training=True)
    try:
        metrics.record_step(
            step=7, total=10, loss=3.5, tokens=64, seconds=0.1, grad_norm=1.0, lr=1e-3, loss_scale=1.0,
            skipped=False, flops_per_token=1.0, peak=None, world_size=1,
        )  # fmt: skip
        before = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        assert "llmtrain_eval_loss{" not in before and parse_progress(before).eval_loss is None  # no fake 0
        metrics.record_eval(7, 3.123456, 22.7)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    finally:
        metrics.close()
    progress = parse_progress(text)
    assert progress.eval_loss == 3.1235
    assert json.loads(progress.model_dump_json(by_alias=True, exclude_none=True))["evalLoss"] == 3.1235
