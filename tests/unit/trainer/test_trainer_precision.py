"""fp16 loss scaling skips overflowing steps on every rank; a loss that stays non-finite is a divergence (79)."""

from __future__ import annotations

import pytest
from trainer_runs import BASE_CONFIG, merged, run_trainer

INF_STEP = 3
INITIAL_SCALE = 2.0**16


@pytest.fixture(scope="module")
def fp16_run(tmp_path_factory):
    """Two FSDP ranks in fp16; rank 0 alone gets an inf gradient at step 3 (the other rank's shards are clean)."""
    config = merged(
        BASE_CONFIG,
        {"precision": "fp16", "parallelism": {"dataParallel": "fsdp", "sharding": "zero2"}, "training": {"steps": 6}},
    )
    env = {"LLMTRAIN_INJECT_INF_GRAD_STEPS": str(INF_STEP)}
    return run_trainer(config, tmp_path_factory.mktemp("fp16"), nproc=2, env=env)


def test_fp16_step_with_an_inf_gradient_is_skipped_and_training_goes_on(fp16_run):
    assert fp16_run.returncode == 0, fp16_run.explain()
    assert [e["step"] for e in fp16_run.of("step_skipped")] == [INF_STEP]
    assert fp16_run.of("done")[0]["skipped_total"] == 1


def test_fp16_overflow_halves_the_loss_scale(fp16_run):
    scales = {e["step"]: e["loss_scale"] for e in fp16_run.of("step")}
    assert scales[INF_STEP - 1] == INITIAL_SCALE
    assert scales[INF_STEP] == INITIAL_SCALE / 2
    assert scales[6] == INITIAL_SCALE / 2


def test_fp16_run_still_learns_after_the_skipped_step(fp16_run):
    losses = fp16_run.losses
    assert losses[6] < losses[INF_STEP] < losses[1]


def test_loss_non_finite_for_patience_steps_exits_diverged(tmp_path):
    config = merged(BASE_CONFIG, {"precision": "bf16", "training": {"steps": 20, "divergencePatience": 3}})
    run = run_trainer(config, tmp_path, env={"LLMTRAIN_INJECT_NAN_LOSS_STEPS": "4-20"})
    assert run.returncode == 79, run.explain()
    assert [e["step"] for e in run.of("step_skipped")] == [4, 5, 6]
    last_line = run.stderr.strip().splitlines()[-1]
    assert last_line.startswith("llmtrain: diverged: loss was non-finite for 3 consecutive steps")
    message = run.termination_message
    assert message["exitCode"] == 79 and message["reason"] == "Diverged" and message["llmtrain"] is True
