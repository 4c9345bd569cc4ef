"""Bring your own training script (spec.trainer): the examples in examples/custom run as users run them.

Each example's script reaches the pods the way its job.yaml says: a ConfigMap made from the example's directory,
mounted at /workspace. On the test bed the pods run in the repo's Python environment (torch, transformers,
accelerate, deepspeed from requirements.lock), on CPU with gloo.
"""

from __future__ import annotations

import copy
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from llmtrain_testbed.testing import Cluster, wait_for

from .jobs import REPO, checkpoint_claim, create_job, progress, status, trainer_logs, wait_phase

EXAMPLES = REPO / "examples" / "custom"


def script_config_map(cluster: Cluster, namespace: str, example: str) -> None:
    """`kubectl create configmap <name> --from-file=examples/custom/<example>/`, as the example's header says."""
    job = yaml.safe_load((EXAMPLES / example / "job.yaml").read_text())
    name = job["spec"]["podTemplate"]["volumes"][0]["configMap"]["name"]
    files = {p.name: p.read_text() for p in sorted((EXAMPLES / example).iterdir()) if p.suffix in (".py", ".json")}
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": files}
    client.CoreV1Api(cluster.api_client).create_namespaced_config_map(namespace, body)


def custom_job(
    cluster: Cluster, namespace: str, example: str, name: str, args: list[str], claim: str | None = None
) -> dict[str, Any]:
    """examples/custom/<example>/job.yaml renamed, with `args` and the test's checkpoint claim (or none)."""
    script_config_map(cluster, namespace, example)
    job = copy.deepcopy(yaml.safe_load((EXAMPLES / example / "job.yaml").read_text()))
    job["metadata"] = {"name": name}
    job["spec"]["trainer"]["args"] = args
    job["spec"]["runPolicy"] = {**job["spec"].get("runPolicy", {}), "activeDeadlineSeconds": 1500}
    if claim:
        job["spec"]["checkpoint"]["claimName"] = claim
    else:
        job["spec"].pop("checkpoint", None)
    return job


def pod_logs(cluster: Cluster, namespace: str, name: str) -> str:
    return "\n".join(trainer_logs(cluster, namespace, name).values())


def get_ltj_row(cluster: Cluster, namespace: str, name: str) -> dict[str, str]:
    """`kubectl get ltj <name>` as {column: value}: what a user sees (cut at the header's column starts, so an empty
    cell stays empty instead of shifting the next value under its name)."""
    header, row = cluster.kubectl("get", "ltj", name, "-n", namespace).stdout.rstrip().splitlines()[:2]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    ends = [*starts[1:], None]
    return {col: row[start:end].strip() for col, start, end in zip(names, starts, ends, strict=True)}


def kill_one_script_worker(cluster: Cluster, namespace: str, job_name: str, script: str) -> None:
    """SIGKILL one worker process running `script` (not the torchrun agent that started it)."""
    if cluster.is_testbed:
        needle = f"LLMTRAIN_JOB_NAME={job_name}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if needle in environ and script.encode() in cmdline and b"torch.distributed.run" not in cmdline:
                pids.append(int(entry.name))
        assert pids, f"no worker of {job_name} running {script} on this machine"
        os.kill(max(pids), signal.SIGKILL)
        return
    code = (
        "import os,signal\n"
        "for p in os.listdir('/proc'):\n"
        "    if p.isdigit():\n"
        "        c=open(f'/proc/{p}/cmdline','rb').read()\n"
        f"        if b'{script}' in c and b'torch.distributed.run' not in c:\n"
        "            os.kill(int(p), signal.SIGKILL); break\n"
    )
    cluster.kubectl("-n", namespace, "exec", f"{job_name}-node-1", "-c", "trainer", "--", "python", "-c", code)


def test_ddp_script_reports_progress_and_resumes_from_its_own_checkpoint_after_a_killed_worker(
    cluster: Cluster, operator: str, namespace: str
) -> None:
    claim = checkpoint_claim(cluster, namespace)
    steps = 150
    args = ["--steps", str(steps), "--seconds-per-step", "0.2"]
    job = custom_job(cluster, namespace, "ddp", "ddp", args, claim=claim)
    job["spec"]["checkpoint"]["interval"] = 10
    create_job(cluster, namespace, job)

    def checkpointed() -> int | None:
        step = progress(cluster, namespace, "ddp").get("lastCheckpointStep") or 0
        return step if step >= 10 else None

    saved = wait_for(checkpointed, timeout=300, what="the script to report a checkpoint")
    running = progress(cluster, namespace, "ddp")
    assert running["totalSteps"] == steps and running["loss"] is not None and running["tokensPerSecond"] > 0
    assert get_ltj_row(cluster, namespace, "ddp")["STEP"].isdigit()

    kill_one_script_worker(cluster, namespace, "ddp", "train_ddp.py")

    wait_for(lambda: status(cluster, namespace, "ddp").get("restarts") == 1, timeout=120, what="a gang restart")
    resumed = wait_for(
        lambda: re.findall(
            r"train_ddp: attempt 1, world 4, resumed from step (\d+)", pod_logs(cluster, namespace, "ddp")
        ),
        timeout=240,
        what="the new gang to resume from the script's checkpoint",
    )
    assert int(resumed[-1]) >= saved
    final = wait_phase(cluster, namespace, "ddp", "Succeeded", timeout=600)
    assert final["restarts"] == 1
    assert final["progress"]["step"] == steps and final["progress"]["lastCheckpointStep"] == steps


def test_hugging_face_trainer_script_shows_progress_in_kubectl_get_ltj(
    cluster: Cluster, operator: str, namespace: str
) -> None:
    claim = checkpoint_claim(cluster, namespace)
    create_job(cluster, namespace, custom_job(cluster, namespace, "huggingface", "hf", ["--steps", "60"], claim))

    row = wait_for(
        lambda: (r := get_ltj_row(cluster, namespace, "hf")).get("STEP", "<none>").isdigit() and r,
        timeout=420,
        what="kubectl get ltj to show the Trainer's step",
    )
    assert row["PHASE"] in ("Running", "Succeeded")
    final = wait_phase(cluster, namespace, "hf", "Succeeded", timeout=600)
    assert final["progress"]["step"] == 60 and final["progress"]["totalSteps"] == 60
    assert final["progress"]["loss"] is not None and final["restarts"] == 0
    assert get_ltj_row(cluster, namespace, "hf")["STEP"] == "60"


def test_deepspeed_script_trains_zero2_on_cpu_and_reports_progress(
    cluster: Cluster, operator: str, namespace: str
) -> None:
    claim = checkpoint_claim(cluster, namespace)
    args = ["--steps", "30", "--deepspeed", "--deepspeed_config", "/workspace/ds_config.json"]
    create_job(cluster, namespace, custom_job(cluster, namespace, "deepspeed", "ds", args, claim))

    final = wait_phase(cluster, namespace, "ds", "Succeeded", timeout=900)
    assert final["progress"]["step"] == 30 and final["progress"]["lastCheckpointStep"] == 30
    assert final["progress"]["loss"] is not None and final["restarts"] == 0
    assert "train_deepspeed: step 30/30" in pod_logs(cluster, namespace, "ds")


def test_a_script_exiting_78_fails_the_job_at_once_without_restarts(
    cluster: Cluster, operator: str, namespace: str
) -> None:
    create_job(cluster, namespace, custom_job(cluster, namespace, "ddp", "bad-args", ["--lr", "0"]))

    final = wait_phase(cluster, namespace, "bad-args", "Failed", timeout=300)
    failed = next(c for c in final["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidConfig", failed
    assert "--lr must be > 0" in failed["message"]
    assert final.get("restarts", 0) == 0


def test_a_pytorchjob_script_reading_only_pet_and_master_variables_runs_unchanged(
    cluster: Cluster, operator: str, namespace: str
) -> None:
    create_job(cluster, namespace, custom_job(cluster, namespace, "pytorchjob", "kubeflow", []))

    final = wait_phase(cluster, namespace, "kubeflow", "Succeeded", timeout=420)
    assert final["restarts"] == 0
    assert "progress" not in final or not final["progress"].get("step"), "this script reports nothing"
    assert pod_logs(cluster, namespace, "kubeflow").count("all-reduce ok") == 4


def test_a_built_in_trainer_field_on_a_custom_job_is_rejected_naming_it(
    cluster: Cluster, operator: str, namespace: str
) -> None:
    job = custom_job(cluster, namespace, "ddp", "mixed", [])
    job["spec"]["model"] = {"preset": "tiny"}
    with pytest.raises(ApiException) as rejected:
        create_job(cluster, namespace, job)
    assert rejected.value.status == 422
    assert "spec.model" in rejected.value.body and "built-in trainer field" in rejected.value.body
