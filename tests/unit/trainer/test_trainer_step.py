"""The loop's bookkeeping and decisions, and the step's gradient accumulation, as specifications (no ranks).

The multi-process runs in the other files show these pieces working together; here each rule stands alone.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from llmtrain_contract.memory import MemoryEstimate
from llmtrain_trainer.build import step_plan
from llmtrain_trainer.config import ConfigError, TrainerConfig
from llmtrain_trainer.memory_check import MemoryReport
from llmtrain_trainer.parallelize import ParallelDims
from llmtrain_trainer.precision import LossScaler
from llmtrain_trainer.prefetch import to_device_micro_batches
from llmtrain_trainer.progress import (
    Progress,
    SaveReason,
    ThroughputWindow,
    checkpoint_due,
    exits_on_sigterm,
    finite_or_none,
    has_diverged,
    micro_batches_per_step,
    should_log,
)
from llmtrain_trainer.step import (
    FaultInjection,
    PendingReadout,
    RankAgreement,
    StepPlan,
    apply_update,
    collect_outcomes,
    forward_backward,
    parse_steps,
    unscale_and_clip,
)
from torch import nn
from trainer_runs import BASE_CONFIG, merged

VOCAB, SEQ = 16, 5

# --- gradient accumulation ------------------------------------------------------------------------------------


def test_each_rank_accumulates_its_share_of_the_global_batch_in_micro_batches():
    assert micro_batches_per_step(global_batch_size=32, micro_batch_size=4, data_parallel_ranks=2) == 4
    assert micro_batches_per_step(global_batch_size=8, micro_batch_size=8, data_parallel_ranks=1) == 1


@pytest.mark.parametrize(
    ("global_batch", "micro_batch", "ranks"),
    [(6, 2, 4), (2, 1, 4), (12, 4, 2)],  # not per rank; fewer rows than ranks; share not a multiple of micro
)
def test_a_global_batch_that_does_not_split_evenly_is_a_config_error_naming_the_field(global_batch, micro_batch, ranks):
    with pytest.raises(ConfigError, match=r"^training\.globalBatchSize: .* microBatchSize x data-parallel degree"):
        micro_batches_per_step(global_batch_size=global_batch, micro_batch_size=micro_batch, data_parallel_ranks=ranks)


class FakeDDP(nn.Module):
    """A tiny language model with DDP's `no_sync`, recording whether each forward ran with gradient sync off."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, 8)
        self.head = nn.Linear(8, VOCAB)
        self.unsynced: list[bool] = []
        self._in_no_sync = False

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean cross-entropy against targets, as our Transformer computes it when given them."""
        self.unsynced.append(self._in_no_sync)
        return F.cross_entropy(self.head(self.embed(tokens)).flatten(0, 1), targets.flatten())

    @contextmanager
    def no_sync(self):
        self._in_no_sync = True
        try:
            yield
        finally:
            self._in_no_sync = False


class FakeFSDP(FakeDDP):
    """The same model with FSDP2's `set_requires_all_reduce` (HSDP's all-reduce across replicas), recording each
    call; like FSDP2 it reduce-scatters every micro-batch unless told otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.all_reduce_calls: list[bool] = []

    def set_requires_all_reduce(self, requires: bool) -> None:
        self.all_reduce_calls.append(requires)

    def set_requires_gradient_sync(self, requires: bool) -> None:
        raise AssertionError("gradients stay sharded: FSDP reduce-scatters every micro-batch")


def backward(
    model: nn.Module,
    *,
    rows: int = 2,
    micro_batch: int = 2,
    scaler: LossScaler | None = None,
    poison_loss: bool = False,
) -> torch.Tensor:
    """forward_backward over the same `rows` sequences, cut into micro-batches of `micro_batch` rows."""
    tokens = np.random.default_rng(1).integers(0, VOCAB, (rows, SEQ + 1))
    inputs, targets = torch.from_numpy(tokens[:, :-1]), torch.from_numpy(tokens[:, 1:])
    micro_batches = to_device_micro_batches(inputs, targets, torch.device("cpu"), micro_batch)
    plan = StepPlan(micro_batch, len(micro_batches), 0, grad_clip=0.0, autocast_dtype=None, loss_parallel=False)
    return forward_backward(model, micro_batches, scaler or LossScaler(enabled=False), plan, poison_loss=poison_loss)


def gradients(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def test_accumulated_micro_batches_give_the_loss_and_gradient_of_the_whole_share():
    whole, accumulated = FakeDDP(), FakeDDP()
    loss_whole = backward(whole, rows=6, micro_batch=6)
    loss_accumulated = backward(accumulated, rows=6, micro_batch=2)
    assert loss_accumulated.item() == pytest.approx(loss_whole.item(), rel=1e-6)
    for grad_whole, grad_accumulated in zip(gradients(whole), gradients(accumulated), strict=True):
        torch.testing.assert_close(grad_accumulated, grad_whole, rtol=1e-5, atol=1e-7)


def test_ddp_synchronises_gradients_only_on_the_last_micro_batch():
    model = FakeDDP()
    backward(model, rows=6, micro_batch=2)
    assert model.unsynced == [True, True, False]


def test_fsdp_reduce_scatters_every_micro_batch_and_all_reduces_across_replicas_only_on_the_last():
    model = FakeFSDP()
    backward(model, rows=6, micro_batch=2)
    assert model.all_reduce_calls == [False, False, True]
    assert model.unsynced == [False, False, False]  # FSDP2 never enters DDP's no_sync


def test_the_loss_scale_multiplies_the_gradients_and_unscaling_restores_them():
    plain, scaled = FakeDDP(), FakeDDP()
    backward(plain, rows=4)
    scaler = LossScaler(enabled=True, init_scale=1024.0)
    loss = backward(scaled, rows=4, scaler=scaler)
    assert loss.item() < 10  # the returned loss is the true one, never the scaled one
    norm = unscale_and_clip(list(scaled.parameters()), scaler, grad_clip=0.0, poison_grad=False)
    for grad_plain, grad_unscaled in zip(gradients(plain), gradients(scaled), strict=True):
        torch.testing.assert_close(grad_unscaled, grad_plain, rtol=1e-5, atol=1e-7)
    assert math.isfinite(norm.item())


def test_clipping_returns_the_norm_before_clipping_and_scales_gradients_down_to_the_limit():
    model = FakeDDP()
    backward(model)
    params = list(model.parameters())
    norm = unscale_and_clip(params, LossScaler(enabled=False), grad_clip=1e-3, poison_grad=False)
    assert norm.item() > 1e-3
    clipped = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    assert clipped.item() == pytest.approx(1e-3, rel=1e-4)


def test_an_overflowing_step_is_skipped_its_gradients_dropped_and_the_scale_backed_off():
    model = FakeDDP()
    backward(model)
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    scaler = LossScaler(enabled=True, init_scale=1024.0)
    norm = unscale_and_clip(params, scaler, grad_clip=1.0, poison_grad=True)
    assert not math.isfinite(norm.item())
    optimizer = torch.optim.AdamW(params, lr=0.1, fused=True)
    apply_update(optimizer, scaler, found_nonfinite=torch.tensor(1.0))
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    assert all(p.grad is None for p in params)
    assert (scaler.scale, scaler.skipped_steps) == (512.0, 1)
    # AdamW's state did not advance either: exact resume depends on its step count
    assert all(state["step"].item() == 0 for state in optimizer.state.values())
    assert all(not state["exp_avg"].any() for state in optimizer.state.values())


def test_a_clean_step_updates_the_parameters_and_clears_the_gradients():
    model = FakeDDP()
    backward(model)
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=0.1, fused=True)
    apply_update(optimizer, LossScaler(enabled=False), found_nonfinite=torch.tensor(0.0))
    assert not any(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    assert all(p.grad is None for p in params)
    assert all(state["step"].item() == 1 for state in optimizer.state.values())


def test_the_skip_is_taken_on_the_device_the_next_clean_step_counts_as_the_first():
    """A skipped step leaves AdamW exactly as if it had not happened: skip-then-step equals a single step."""
    skipped_then_stepped, stepped = FakeDDP(), FakeDDP()
    for model, flags in ((skipped_then_stepped, (1.0, 0.0)), (stepped, (0.0,))):
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
        for flag in flags:
            backward(model)
            apply_update(optimizer, LossScaler(enabled=False), found_nonfinite=torch.tensor(flag))
    for a, b in zip(skipped_then_stepped.parameters(), stepped.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_loss_scale_grows_after_a_clean_stretch_and_never_backs_off_below_the_minimum():
    scaler = LossScaler(enabled=True, init_scale=4.0, growth_interval=2, min_scale=1.0)
    scales = []
    for overflow in (0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0):
        scaler.update(torch.tensor(overflow))
        scales.append(scaler.scale)
    assert scales == [4.0, 8.0, 4.0, 2.0, 1.0, 1.0, 1.0]
    assert (scaler.skipped_steps, scaler.clean_steps) == (4, 1)


def test_a_poisoned_loss_makes_the_step_loss_nan():
    assert math.isnan(backward(FakeDDP(), poison_loss=True).item())


# --- the step plan ----------------------------------------------------------------------------------------------


def _dims(data_parallel: str, tp: int = 1, dp: int = 2) -> ParallelDims:
    replicate, shard = (dp, 1) if data_parallel == "ddp" else (1, dp)
    return ParallelDims(replicate, shard, tp, data_parallel, "zero3")


def test_plain_ddp_casts_with_autocast_fsdp_and_tp_through_their_policy():
    config = TrainerConfig.model_validate(merged(BASE_CONFIG, {"precision": "bf16"}))
    assert step_plan(config, _dims("ddp")).autocast_dtype == torch.bfloat16
    assert step_plan(config, _dims("fsdp")).autocast_dtype is None
    assert step_plan(config, _dims("ddp", tp=2, dp=1)).autocast_dtype is None


def test_the_loss_runs_on_sharded_logits_only_under_tensor_parallelism():
    config = TrainerConfig.model_validate(BASE_CONFIG)
    assert step_plan(config, _dims("fsdp", tp=2, dp=1)).loss_parallel
    assert not step_plan(config, _dims("fsdp")).loss_parallel
    off = TrainerConfig.model_validate(merged(BASE_CONFIG, {"parallelism": {"lossParallel": False}}))
    assert not step_plan(off, _dims("fsdp", tp=2, dp=1)).loss_parallel


def test_the_plan_counts_the_global_batchs_tokens_and_each_ranks_micro_batches():
    config = TrainerConfig.model_validate(BASE_CONFIG)  # global batch 8, micro-batch 2, sequences of 32
    plan = step_plan(config, _dims("fsdp", dp=2))
    assert (plan.micro_batches, plan.micro_batch_size, plan.tokens_per_step) == (2, 2, 8 * 32)


# --- agreeing across ranks --------------------------------------------------------------------------------------


def test_the_ranks_sums_become_the_average_loss_and_any_rank_flags():
    agreed = RankAgreement.from_sums([3.0, 1.0, 0.0, 2.0], world_size=4)
    assert agreed == RankAgreement(
        loss=0.75, nonfinite_grads=True, stop_requested=False, checkpoint_writes_pending=True
    )
    assert RankAgreement.from_sums([2.0, 0.0, 1.0, 0.0], world_size=2) == RankAgreement(1.0, False, True, False)


def readout(step: int, *, stop: float = 0.0) -> PendingReadout:
    """A step's values as the device would copy them: sums over 2 ranks, then grad norm, scale, skips."""
    values = torch.tensor([2.0 * step, 0.0, stop, 0.0, 0.5, 1.0, 0.0])
    return PendingReadout(values, None, step, lr=1e-3, pending_save_step=None)


def test_values_are_read_one_step_late_except_on_steps_read_at_once():
    trainer = SimpleNamespace(runtime=SimpleNamespace(world_size=2), unread=None)
    read_at_once = {3, 4}
    observed = []
    for step in range(1, 7):
        outcomes = collect_outcomes(trainer, readout(step), read_now=step in read_at_once)
        observed.append([outcome.step for outcome in outcomes])
    assert observed == [[], [1], [2, 3], [4], [], [5]]  # every step read exactly once, in order


def test_a_late_read_carries_what_every_rank_agreed_on_at_that_step():
    trainer = SimpleNamespace(runtime=SimpleNamespace(world_size=2), unread=None)
    collect_outcomes(trainer, readout(7, stop=1.0), read_now=False)
    (late,) = collect_outcomes(trainer, readout(8), read_now=False)
    assert (late.step, late.loss, late.stop_requested, late.skipped) == (7, 7.0, True, False)


# --- progress ---------------------------------------------------------------------------------------------------


def test_progress_counts_steps_and_tokens_and_keeps_the_last_loss():
    progress = Progress(step=10, tokens=1000)
    progress.advance(tokens=256)
    progress.observe_loss(2.5)  # read from the device when due: at once or one step late
    assert (progress.step, progress.tokens, progress.last_loss) == (11, 1256, 2.5)


def test_the_nonfinite_streak_grows_with_each_nan_or_inf_loss_and_a_finite_loss_resets_it():
    progress = Progress()
    streaks = []
    for loss in (1.0, math.nan, math.inf, math.nan, 0.9, math.nan):
        progress.observe_loss(loss)
        streaks.append(progress.nonfinite_loss_streak)
    assert streaks == [0, 1, 2, 3, 0, 1]


def test_the_run_has_diverged_once_the_streak_reaches_the_patience():
    assert not has_diverged(2, patience=3)
    assert has_diverged(3, patience=3)


def test_throughput_is_the_windows_tokens_over_its_wall_time_and_restarts_empty():
    window = ThroughputWindow(started=100.0)
    window.add(500)
    window.add(500)
    assert window.rate(now=102.0) == 500.0
    window.restart(now=102.0)
    assert (window.tokens, window.rate(now=102.0)) == (0, 0.0)  # no time passed: 0, not a division by zero


# --- decisions --------------------------------------------------------------------------------------------------


def test_a_log_line_every_interval_steps_and_always_for_the_last_step():
    logged = [step for step in range(1, 26) if should_log(step, interval=10, total_steps=25)]
    assert logged == [10, 20, 25]


def test_the_memory_estimate_is_logged_once_at_the_processes_second_step_or_its_last():
    estimate = MemoryEstimate(1, 0, 2, 3, 0, 0, 0, phase="backward")
    fresh = MemoryReport(estimate)
    assert [step for step in range(1, 11) if fresh.due(step, total_steps=10)] == [2]  # step 1 creates AdamW state
    resumed = MemoryReport(estimate)
    assert [step for step in range(501, 1001) if resumed.due(step, total_steps=1000)] == [502]
    one_step = MemoryReport(estimate)
    assert [step for step in range(1, 2) if one_step.due(step, total_steps=1)] == [1]


def test_checkpoints_are_saved_every_interval_steps_and_at_the_last_step():
    saved = [
        step
        for step in range(1, 26)
        if checkpoint_due(step, interval=10, total_steps=25, stop_requested=False, save_on_sigterm=True)
    ]
    assert saved == [10, 20, 25]


def test_sigterm_saves_at_once_and_that_save_stands_for_a_scheduled_one_at_the_same_step():
    due = {"interval": 10, "total_steps": 25, "stop_requested": True, "save_on_sigterm": True}
    assert checkpoint_due(7, **due) is SaveReason.SIGTERM
    assert checkpoint_due(10, **due) is SaveReason.SIGTERM


def test_sigterm_without_save_on_sigterm_saves_only_on_schedule():
    due = {"interval": 10, "total_steps": 25, "stop_requested": True, "save_on_sigterm": False}
    assert checkpoint_due(7, **due) is None
    assert checkpoint_due(10, **due) is SaveReason.SCHEDULED


def test_sigterm_stops_the_run_unless_it_came_during_the_last_step():
    assert exits_on_sigterm(7, total_steps=25, stop_requested=True)
    assert not exits_on_sigterm(25, total_steps=25, stop_requested=True)  # done and saved: finish normally
    assert not exits_on_sigterm(7, total_steps=25, stop_requested=False)


def test_the_termination_message_reports_no_loss_rather_than_a_non_finite_one():
    assert finite_or_none(1.25) == 1.25
    assert finite_or_none(math.nan) is None
    assert finite_or_none(None) is None


# --- fault injection --------------------------------------------------------------------------------------------


def test_fault_steps_are_single_steps_lists_and_ranges():
    assert parse_steps("") == frozenset()
    assert parse_steps("3") == {3}
    assert parse_steps("3,7") == {3, 7}
    assert parse_steps("3-5,9") == {3, 4, 5, 9}


def test_faults_are_read_from_the_environment():
    faults = FaultInjection.from_env({"LLMTRAIN_INJECT_INF_GRAD_STEPS": "2", "LLMTRAIN_INJECT_NAN_LOSS_STEPS": "4-5"})
    assert faults == FaultInjection(inf_grad_steps=frozenset({2}), nan_loss_steps=frozenset({4, 5}))
    assert FaultInjection.from_env({}) == FaultInjection()
