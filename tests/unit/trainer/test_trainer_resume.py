"""Exact resume: N steps straight equal N/2 steps + restart from the checkpoint + N/2 steps.

The restart reads model and optimizer shards (DCP), the data position, the loss scaler and the RNG state, so
the resumed losses equal the uninterrupted run's to float32 round-off (we allow 1e-5). Checkpoints that are
half-written (.tmp) or lack the .complete marker are never loaded, even when newer.
"""

from __future__ import annotations

import pytest
from trainer_runs import CHECKPOINT_INTERVAL, RESUME_LAYOUT, STEPS


def test_resumed_run_continues_from_the_newest_complete_checkpoint(resumed_run):
    assert resumed_run.returncode == 0, resumed_run.explain()
    loaded = resumed_run.of("checkpoint_loaded")
    assert [e["checkpoint_step"] for e in loaded] == [CHECKPOINT_INTERVAL]
    assert min(resumed_run.losses) == CHECKPOINT_INTERVAL + 1
    assert [e["step"] for e in resumed_run.of("memory")] == [CHECKPOINT_INTERVAL + 2]  # this process's second step


def test_resumed_losses_equal_the_uninterrupted_run(layout_runs, resumed_run):
    straight = layout_runs[RESUME_LAYOUT].losses
    resumed = resumed_run.losses
    assert sorted(resumed) == list(range(CHECKPOINT_INTERVAL + 1, STEPS + 1))
    for step, loss in resumed.items():
        assert loss == pytest.approx(straight[step], abs=1e-5), f"step {step}"


def test_incomplete_checkpoints_are_removed_not_loaded(resumed_run):
    removed = sorted(e["path"].rsplit("/", 1)[-1] for e in resumed_run.of("checkpoint_removed_incomplete"))
    assert removed == [f"step-{CHECKPOINT_INTERVAL + 2:08d}.tmp", f"step-{CHECKPOINT_INTERVAL + 3:08d}"]


def test_async_checkpoints_are_published_complete_with_every_ranks_state(layout_runs):
    run = layout_runs[RESUME_LAYOUT]
    root = run.workdir / "checkpoints"
    names = sorted(p.name for p in root.iterdir())
    assert names == [f"step-{CHECKPOINT_INTERVAL:08d}", f"step-{STEPS:08d}"]
    for name in names:
        files = {p.name for p in (root / name).iterdir()}
        assert {".complete", ".metadata", "trainer-rank00000.pt", "trainer-rank00001.pt"} <= files
