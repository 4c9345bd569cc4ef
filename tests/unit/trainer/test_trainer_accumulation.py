"""Gradient accumulation under FSDP keeps gradients sharded: every micro-batch's gradients are reduce-scattered
at once, so between micro-batches a rank holds about 1/world of the full gradients, not all of them in fp32.
And the accumulated gradients equal those of the same share in one micro-batch. Two ranks, gloo on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from trainer_runs import REPO

WORKER = Path(__file__).with_name("accum_worker.py")
TIMEOUT_S = 240
LAYOUTS = {
    "zero3": {"dp_replicate": 1, "dp_shard": 2, "sharding": "zero3"},
    "zero2": {"dp_replicate": 1, "dp_shard": 2, "sharding": "zero2"},
    # HSDP (replicate x shard): the all-reduce across replicas waits for the last micro-batch
    "hybrid": {"dp_replicate": 2, "dp_shard": 1, "sharding": "hybrid"},
}


def measure(layout: str, workdir: Path) -> dict:
    spec = workdir / f"{layout}.json"
    out = workdir / f"{layout}-out.json"
    spec.write_text(json.dumps({"layout": LAYOUTS[layout], "out": str(out)}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(WORKER), str(spec)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "trainer_image"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(cmd, env=env, cwd=workdir, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def zero3(tmp_path_factory) -> dict:
    return measure("zero3", tmp_path_factory.mktemp("accum"))


def test_between_micro_batches_each_rank_holds_only_its_shard_of_the_gradients(zero3):
    full = zero3["full_bytes"]
    for held in zero3["bytes_after_first"]:
        assert held <= 0.55 * full, f"{held} of {full} bytes: gradients were not reduce-scattered"
    assert sum(zero3["bytes_after_first"]) == pytest.approx(full, rel=0.02)  # the two shards make the whole


def test_accumulated_gradients_equal_the_whole_share_in_one_micro_batch(zero3):
    assert zero3["loss_accum"] == pytest.approx(zero3["loss_whole"], rel=1e-6)
    assert zero3["max_grad_diff"] <= 1e-5 * zero3["grad_scale"]


@pytest.mark.parametrize("layout", ["zero2", "hybrid"])
def test_zero2_and_hsdp_accumulate_to_the_same_gradients_too(layout, tmp_path):
    result = measure(layout, tmp_path)
    assert result["loss_accum"] == pytest.approx(result["loss_whole"], rel=1e-6)
    assert result["max_grad_diff"] <= 1e-5 * result["grad_scale"]
