"""bench/operator_scale.py's pure parts: scenario choice, the jobs it makes, the write goal, histogram quantiles."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("bench_operator_scale", REPO / "bench" / "operator_scale.py")
assert _spec is not None and _spec.loader is not None
scale = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = scale  # its dataclass looks its module up while the class is built
_spec.loader.exec_module(scale)

ARGS = argparse.Namespace(
    big_nodes=64,
    jobs=100,
    nodes_per_job=4,
    huge_nodes=512,
    thousand_jobs=1000,
    settle_seconds=30.0,
    steady_seconds=60.0,
    life_nodes=4,
    life_seconds=600.0,
)
EXPOSITION = """# HELP x_seconds A histogram.
# TYPE x_seconds histogram
x_seconds_bucket{le="0.1"} 50.0
x_seconds_bucket{le="1.0"} 90.0
x_seconds_bucket{le="5.0"} 100.0
x_seconds_bucket{le="+Inf"} 100.0
x_seconds_count 100.0
x_seconds_sum 42.0
"""


def test_the_default_run_stays_short_and_names_pick_scenarios_in_order():
    assert [plan.label for plan in scale.pick_scenarios("big,many", ARGS)] == ["one_big_job", "many_jobs"]
    plans = scale.pick_scenarios("life, thousand,huge", ARGS)
    assert [(plan.jobs, plan.nodes) for plan in plans] == [(1, 4), (1000, 4), (1, 512)]
    assert plans[0].life_s == 600.0 and plans[0].timeout_s > 600.0


def test_an_unknown_scenario_is_refused():
    with pytest.raises(SystemExit, match="nope"):
        scale.pick_scenarios("big,nope", ARGS)


def test_pending_jobs_never_schedule_and_running_ones_sleep_through_the_dev_command():
    pending = scale.job("p", 4)
    assert pending["spec"]["scheduling"]["nodeSelector"] == scale.NO_NODE
    assert "annotations" not in pending["metadata"]
    running = scale.job("r", 4, sleep_s=120.0)
    assert "scheduling" not in running["spec"]
    command = json.loads(running["metadata"]["annotations"]["llmtrain.dev/dev-command"])
    assert command[:2] == ["python", "-c"]
    compile(command[2], "snippet", "exec")  # valid Python once formatted
    assert "time.sleep(120.0)" in command[2] and '("", 9090)' in command[2]


def test_the_life_write_goal_is_nodes_plus_three_plus_one_patch_per_started_minute():
    assert scale.life_write_budget(4, 600.0) == 17
    assert scale.life_write_budget(4, 601.0) == 18
    assert scale.life_write_budget(8, 30.0) == 12


def test_histogram_buckets_are_read_by_upper_bound():
    assert scale.histogram_buckets(EXPOSITION, "x_seconds") == {0.1: 50.0, 1.0: 90.0, 5.0: 100.0, math.inf: 100.0}
    assert scale.histogram_buckets(EXPOSITION, "y_seconds") == {}


def test_quantiles_interpolate_inside_the_bucket_like_histogram_quantile():
    buckets = scale.histogram_buckets(EXPOSITION, "x_seconds")
    assert scale.bucket_quantile(buckets, 0.5) == pytest.approx(0.1)
    assert scale.bucket_quantile(buckets, 0.25) == pytest.approx(0.05)  # halfway into the first bucket, from 0
    assert scale.bucket_quantile(buckets, 0.7) == pytest.approx(0.55)  # halfway between 0.1 and 1.0
    assert scale.bucket_quantile(buckets, 0.99) == pytest.approx(1.0 + 4.0 * 0.9)


def test_a_quantile_in_the_inf_bucket_is_beyond_the_highest_finite_bound_and_no_samples_is_none():
    beyond = {1.0: 1.0, 5.0: 1.0, math.inf: 10.0}
    assert scale.bucket_quantile(beyond, 0.99) == math.inf
    assert scale.quantile_text(beyond, 0.99) == ">5"
    assert scale.quantile_text(beyond, 0.05) == 0.5
    assert scale.bucket_quantile({1.0: 0.0, math.inf: 0.0}, 0.5) is None
    assert scale.quantile_text({}, 0.5) is None


def test_the_delta_between_two_reads_is_what_the_scenario_added():
    before = {0.1: 5.0, math.inf: 6.0}
    after = {0.1: 7.0, math.inf: 10.0}
    assert scale.bucket_delta(after, before) == {0.1: 2.0, math.inf: 4.0}
