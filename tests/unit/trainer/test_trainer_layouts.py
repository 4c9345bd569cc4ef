"""Every parallel layout trains, and trains the same model: DDP, FSDP ZeRO-2/3, TP=2, FSDP x TP (2 x 2) and
hybrid sharding across two (simulated) nodes; ZeRO-2 and TP=2 also checkpoint activations (selective, full).

Equivalence tolerance: all runs are fp32 on the same global batches and initial weights, so the only
difference is the order of floating-point reductions (gradient all-reduce/reduce-scatter, sharded matmuls).
Measured differences are about 1e-5 after 12 steps; we allow 1e-3 on the loss and 1e-3 relative on the norm.
"""

from __future__ import annotations

import math

import pytest
from trainer_runs import LAYOUTS, STEPS

LOSS_ATOL = 1e-3
GRAD_NORM_RTOL = 1e-3


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_trains_to_the_end_and_its_loss_falls(layout_runs, layout):
    run = layout_runs[layout]
    assert run.returncode == 0, run.explain()
    losses = run.losses
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert all(math.isfinite(v) for v in losses.values())
    assert losses[STEPS] < losses[1] - 0.5, losses


@pytest.mark.parametrize("layout", [name for name in LAYOUTS if name != "single"])
def test_layout_matches_the_single_process_loss_curve(layout_runs, layout):
    single, other = layout_runs["single"], layout_runs[layout]
    assert single.returncode == 0 and other.returncode == 0, single.explain() + other.explain()
    for step, loss in single.losses.items():
        assert other.losses[step] == pytest.approx(loss, abs=LOSS_ATOL), f"step {step}"


@pytest.mark.parametrize("layout", [name for name in LAYOUTS if name != "single"])
def test_layout_computes_the_global_gradient_norm_across_its_mesh(layout_runs, layout):
    """Clipping is active (norms near 1 with gradClip 1.0), so a wrong norm would also change the losses."""
    single, other = layout_runs["single"], layout_runs[layout]
    for step, norm in single.grad_norms.items():
        assert other.grad_norms[step] == pytest.approx(norm, rel=GRAD_NORM_RTOL), f"step {step}"


def test_layouts_report_the_mesh_they_were_asked_for(layout_runs):
    meshes = {name: run.of("start")[0]["mesh"] for name, run in layout_runs.items()}
    assert meshes == {
        "single": [1, 1, 1],
        "ddp": [2, 1, 1],
        "zero2": [1, 2, 1],
        "zero3": [1, 2, 1],
        "tp2": [1, 1, 2],
        "fsdp2x_tp2": [1, 2, 2],
        "hybrid_2nodes": [2, 1, 1],
    }


def test_every_layout_logs_its_memory_estimate_once_after_its_second_step(layout_runs):
    """The preflight estimate beside the measured peak (on CPU there is none to measure), from rank 0 only."""
    for name, run in layout_runs.items():
        (memory,) = run.of("memory")
        assert memory["step"] == 2, name
        assert memory["estimate"].startswith("peak ") and memory["estimate_gib"] > 0, name
        assert "measured_gib" not in memory, name
