"""Batches prepared ahead on a background thread: the same batches in the same order, a position that counts only
the batches consumed (exact resume), failures raised in the training thread, a bounded lead and a clean stop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from llmtrain_trainer.data import BatchSampler, synthetic_tokens
from llmtrain_trainer.prefetch import BatchPrefetcher

CPU = torch.device("cpu")
MICRO_BATCH = 2


def sampler(*, dp_rank: int = 0) -> BatchSampler:
    return BatchSampler(synthetic_tokens(64, seed=3, n=4096), 16, 8, dp_rank, 2, seed=7)


def joined(micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[np.ndarray, np.ndarray]:
    """The micro-batches glued back into this rank's (inputs, targets)."""
    inputs, targets = zip(*micro_batches, strict=True)
    return torch.cat(inputs).numpy(), torch.cat(targets).numpy()


def assert_same_batch(actual: tuple[np.ndarray, np.ndarray], expected: tuple[np.ndarray, np.ndarray]) -> None:
    for got, want in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(got, want)


class FailingSampler(BatchSampler):
    """Raises while preparing `fail_at`, and records every step it was asked for."""

    fail_at = 2

    def batch_at(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        self.requested = [*getattr(self, "requested", []), step]
        if step == self.fail_at:
            raise ValueError(f"shard unreadable at step {step}")
        return super().batch_at(step)


@pytest.mark.parametrize("dp_rank", [0, 1])
def test_prefetched_batches_are_the_samplers_batches_in_the_same_order(dp_rank):
    plain, ahead = sampler(dp_rank=dp_rank), sampler(dp_rank=dp_rank)
    prefetcher = BatchPrefetcher(ahead, CPU, MICRO_BATCH)
    try:
        for _ in range(6):
            assert_same_batch(joined(prefetcher.next_batch()), plain.next_batch())
    finally:
        prefetcher.close()


def test_the_batch_is_cut_into_micro_batches_on_the_device():
    prefetcher = BatchPrefetcher(sampler(), CPU, MICRO_BATCH)
    try:
        micro_batches = prefetcher.next_batch()
    finally:
        prefetcher.close()
    assert len(micro_batches) == 2  # 8 rows / 2 ranks / micro-batches of 2
    assert all(rows.shape == (MICRO_BATCH, 16) and rows.device == CPU for pair in micro_batches for rows in pair)


def test_the_saved_position_counts_the_batches_consumed_not_those_prepared_ahead():
    source = sampler()
    prefetcher = BatchPrefetcher(source, CPU, MICRO_BATCH)
    try:
        for _ in range(3):
            prefetcher.next_batch()
        assert source.state_dict()["step"] == 3
    finally:
        prefetcher.close()


def test_a_run_resumed_at_step_n_gets_the_batch_of_step_n():
    uninterrupted = sampler()
    expected = [uninterrupted.batch_at(step) for step in range(6)]
    resumed = sampler()
    resumed.load_state_dict({"step": 4, "seed": 7})
    prefetcher = BatchPrefetcher(resumed, CPU, MICRO_BATCH)
    try:
        assert_same_batch(joined(prefetcher.next_batch()), expected[4])
        assert_same_batch(joined(prefetcher.next_batch()), expected[5])
    finally:
        prefetcher.close()


def test_moving_the_position_while_prefetching_starts_again_from_the_new_position():
    source = sampler()
    prefetcher = BatchPrefetcher(source, CPU, MICRO_BATCH)
    try:
        prefetcher.next_batch()
        source.load_state_dict({"step": 10, "seed": 7})
        assert_same_batch(joined(prefetcher.next_batch()), sampler().batch_at(10))
    finally:
        prefetcher.close()


def test_a_failure_in_the_thread_is_raised_in_the_training_thread_after_the_good_batches():
    source = FailingSampler(synthetic_tokens(64, seed=3, n=4096), 16, 8, 0, 2, seed=7)
    prefetcher = BatchPrefetcher(source, CPU, MICRO_BATCH)
    try:
        prefetcher.next_batch()
        prefetcher.next_batch()
        with pytest.raises(ValueError, match="shard unreadable at step 2"):
            prefetcher.next_batch()
        assert source.step == 2  # the failed batch was not consumed
    finally:
        prefetcher.close()


def test_the_thread_prepares_at_most_the_queue_depth_ahead_and_stops_on_close():
    source = FailingSampler(synthetic_tokens(64, seed=3, n=4096), 16, 8, 0, 2, seed=7)
    source.fail_at = -1  # never
    prefetcher = BatchPrefetcher(source, CPU, MICRO_BATCH, depth=2)
    prefetcher.next_batch()
    thread = prefetcher._thread
    prefetcher.close()
    assert thread is not None and not thread.is_alive()
    # consumed step 0; steps 1 and 2 queued; at most step 3 in the thread's hands, blocked on the full queue
    assert max(source.requested) <= 1 + 2


def test_batches_are_pinned_only_when_cuda_is_available():
    assert BatchPrefetcher(sampler(), CPU, MICRO_BATCH).pin == torch.cuda.is_available()
