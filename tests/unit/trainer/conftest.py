"""Session fixtures: each layout is trained once and several tests assert on the same run."""

from __future__ import annotations

import shutil

import pytest
from trainer_runs import CHECKPOINT_INTERVAL, LAYOUTS, RESUME_LAYOUT, Run, run_layout


@pytest.fixture(scope="session")
def layout_runs(tmp_path_factory) -> dict[str, Run]:
    """Every layout trained once on the same global batches and seed (fp32): the suite's shared evidence."""
    root = tmp_path_factory.mktemp("layouts")
    runs = {}
    for name in LAYOUTS:
        ckpt = root / name / "checkpoints" if name == RESUME_LAYOUT else None
        runs[name] = run_layout(name, root / name, ckpt)
    return runs


@pytest.fixture(scope="session")
def resumed_run(layout_runs, tmp_path_factory) -> Run:
    """The resume layout restarted from its mid-run checkpoint, next to a half-written and an unmarked newer one."""
    source = layout_runs[RESUME_LAYOUT]
    assert source.returncode == 0, source.explain()
    workdir = tmp_path_factory.mktemp("resumed")
    ckpt = workdir / "checkpoints"
    ckpt.mkdir()
    middle = f"step-{CHECKPOINT_INTERVAL:08d}"
    shutil.copytree(source.workdir / "checkpoints" / middle, ckpt / middle)
    # newer but not complete: a save interrupted before its rename, and one whose marker was never written
    later = CHECKPOINT_INTERVAL + 2
    half = ckpt / f"step-{later:08d}.tmp"
    half.mkdir()
    (half / ".metadata").write_bytes(b"half-written garbage")
    (half / ".complete").write_text("{}")
    unmarked = ckpt / f"step-{later + 1:08d}"
    unmarked.mkdir()
    (unmarked / ".metadata").write_bytes(b"never completed")
    return run_layout(RESUME_LAYOUT, workdir, ckpt)
