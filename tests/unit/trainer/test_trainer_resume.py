"""Exact resume: N steps straight equal N/2 steps + restart from the checkpoint + N/2 steps.

The restart reads model and optimizer shards (DCP), the data position, the loss scaler and the RNG state, so
the resumed losses equal the uninterrupted run's to float32 round-off (we allow 1e-5). Checkpoints that are
half-written (.tmp) or lack the .complete marker are never loaded, even when newer.
"""

from __future__ import annotations

import shutil

import pytest
from trainer_runs import CHECKPOINT_INTERVAL, RESUME_LAYOUT, STEPS, Run, layout_config, merged, run_trainer


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


# --- values read one step late --------------------------------------------------------------------------------

LAGGED_LOG_INTERVAL = 5  # steps 5, 10 and the last are read at once; every other step one step late


@pytest.fixture(scope="module")
def lagged_runs(tmp_path_factory) -> tuple[Run, Run]:
    """The resume layout logging every 5 steps (most values reach the host one step late), straight and resumed
    from its own async mid-run checkpoint."""
    workdir = tmp_path_factory.mktemp("lagged")
    logging = {"logging": {"interval": LAGGED_LOG_INTERVAL}}
    config = merged(layout_config(RESUME_LAYOUT, workdir / "checkpoints"), logging)
    straight = run_trainer(config, workdir, nproc=2)
    resumed_dir = tmp_path_factory.mktemp("lagged-resumed")
    middle = f"step-{CHECKPOINT_INTERVAL:08d}"
    shutil.copytree(workdir / "checkpoints" / middle, resumed_dir / "checkpoints" / middle)
    config["checkpoint"]["dir"] = str(resumed_dir / "checkpoints")
    return straight, run_trainer(config, resumed_dir, nproc=2)


def test_reading_values_late_changes_no_number_and_publishes_every_async_save(layout_runs, lagged_runs):
    straight, _ = lagged_runs
    assert straight.returncode == 0, straight.explain()
    assert sorted(straight.losses) == [5, 10, STEPS]
    for step, loss in straight.losses.items():
        assert loss == pytest.approx(layout_runs[RESUME_LAYOUT].losses[step], abs=1e-5), f"step {step}"
    published = [e["checkpoint_step"] for e in straight.of("checkpoint_saved")]
    assert published == [CHECKPOINT_INTERVAL, STEPS]


def test_a_run_that_reads_values_late_resumes_exactly(layout_runs, lagged_runs):
    _, resumed = lagged_runs
    assert resumed.returncode == 0, resumed.explain()
    assert sorted(resumed.losses) == [10, STEPS]
    for step, loss in resumed.losses.items():
        assert loss == pytest.approx(layout_runs[RESUME_LAYOUT].losses[step], abs=1e-5), f"step {step}"
