"""bench/peers gives both operators matching jobs: same pod count, resources, script, arguments and checkpoints."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("bench_peers_manifests", REPO / "bench" / "peers" / "manifests.py")
assert _spec is not None and _spec.loader is not None
manifests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(manifests)

ARGS = manifests.script_args(60, 0.25, 10)


def _pytorch_pods(job: dict) -> int:
    return sum(spec["replicas"] for spec in job["spec"]["pytorchReplicaSpecs"].values())


def test_a_64_node_job_is_64_pods_for_both_operators():
    assert manifests.llmtrain_job("big", 64, ARGS)["spec"]["nodes"] == 64
    job = manifests.pytorch_job("big", 64, ARGS)
    assert _pytorch_pods(job) == 64
    assert job["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] == 1
    assert job["spec"]["nprocPerNode"] == "1"


def test_both_run_the_same_script_with_the_same_arguments_and_resources():
    ours = manifests.llmtrain_job("f", 2, ARGS, claim="ckpt")["spec"]
    (theirs,) = manifests.pytorch_job("f", 2, ARGS, claim="ckpt")["spec"]["pytorchReplicaSpecs"]["Worker"]["template"][
        "spec"
    ]["containers"]
    assert ours["trainer"] == {"command": ["python", manifests.SCRIPT], "args": ARGS}
    assert theirs["command"] == ["python", "-m", "torch.distributed.run", manifests.SCRIPT, *ARGS]
    assert ours["resources"] == theirs["resources"] == manifests.RESOURCES
    assert {"name": "LLMTRAIN_CHECKPOINT_DIR", "value": manifests.CHECKPOINTS} in theirs["env"]
    assert ARGS[ARGS.index("--checkpoint-interval") + 1] == "10"


def test_pending_jobs_pin_every_pod_to_a_node_that_does_not_exist():
    ours = manifests.llmtrain_job("big", 4, ARGS, pending=True)
    theirs = manifests.pytorch_job("big", 4, ARGS, pending=True)
    assert ours["spec"]["scheduling"]["nodeSelector"] == manifests.NO_NODE
    for spec in theirs["spec"]["pytorchReplicaSpecs"].values():
        assert spec["template"]["spec"]["nodeSelector"] == manifests.NO_NODE
        assert spec["restartPolicy"] == "OnFailure"


def test_the_backoff_limit_is_passed_through_to_both():
    assert manifests.llmtrain_job("f", 2, ARGS, backoff_limit=6)["spec"]["runPolicy"]["backoffLimit"] == 6
    assert manifests.pytorch_job("f", 2, ARGS, backoff_limit=6)["spec"]["runPolicy"]["backoffLimit"] == 6
    assert "Worker" not in manifests.pytorch_job("one", 1, ARGS)["spec"]["pytorchReplicaSpecs"]


def _compare():
    spec = importlib.util.spec_from_file_location("bench_peers_compare", REPO / "bench" / "peers" / "compare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_median_scale_run_is_reported_with_every_runs_time():
    runs = [{"all_pods_created_s": t, "writes": w} for t, w in ((2.0, 10), (1.0, 11), (3.0, 12))]
    assert _compare().median_run(runs) == {
        "all_pods_created_s": 2.0,
        "writes": 10,
        "runs": 3,
        "all_runs_s": [2.0, 1.0, 3.0],
    }


def test_the_table_has_a_column_per_operator_and_a_dash_where_a_scenario_did_not_run_it():
    compare = _compare()
    results = {"scale": {"a": {"pods": 64}}, "fault": {"a": {"final": "Succeeded"}, "b": {"final": "Failed"}}}
    lines = compare.table(results).splitlines()
    assert lines[0] == "| | a | b |"
    assert "| pods (64-node job) | 64 | - |" in lines
    assert "| fault: final state | Succeeded | Failed |" in lines
