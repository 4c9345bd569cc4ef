"""Helpers the e2e specifications share: build the tiny job, read its status, find its processes."""

from __future__ import annotations

import copy
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from llmtrain_testbed.testing import Cluster, wait_for

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "llmtrain.dev", "v1alpha1", "llmtrainingjobs"
TERMINAL = ("Succeeded", "Failed")


def example(name: str) -> dict[str, Any]:
    """An example manifest from examples/, as users copy it."""
    return yaml.safe_load((REPO / "examples" / name).read_text())


def tiny_job(name: str, *, steps: int = 30, checkpoint_interval: int = 10, claim: str | None = None) -> dict:
    """examples/tiny-cpu.yaml (the demo's job) renamed, with the step count and checkpointing a test needs."""
    job = copy.deepcopy(example("tiny-cpu.yaml"))
    job["metadata"] = {"name": name}
    job["spec"]["training"]["steps"] = steps
    job["spec"]["schedule"]["warmupSteps"] = min(job["spec"]["schedule"].get("warmupSteps", 0), steps - 1)
    if claim:
        job["spec"]["checkpoint"] = {"claimName": claim, "interval": checkpoint_interval, "keep": 2}
    else:
        job["spec"].pop("checkpoint", None)
    return job


def checkpoint_claim(cluster: Cluster, namespace: str, name: str = "checkpoints") -> str:
    """A ReadWriteMany claim like examples/checkpoint-pvc.yaml, bound by the cluster's default StorageClass."""
    pvc = copy.deepcopy(example("checkpoint-pvc.yaml"))
    pvc["metadata"] = {"name": name}
    client.CoreV1Api(cluster.api_client).create_namespaced_persistent_volume_claim(namespace, pvc)
    return name


def create_job(cluster: Cluster, namespace: str, job: dict) -> dict:
    return client.CustomObjectsApi(cluster.api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, job
    )


def get_job(cluster: Cluster, namespace: str, name: str) -> dict:
    return client.CustomObjectsApi(cluster.api_client).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )


def patch_job(cluster: Cluster, namespace: str, name: str, patch: dict) -> dict:
    return client.CustomObjectsApi(cluster.api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, patch
    )


def status(cluster: Cluster, namespace: str, name: str) -> dict:
    return get_job(cluster, namespace, name).get("status") or {}


def progress(cluster: Cluster, namespace: str, name: str) -> dict:
    return status(cluster, namespace, name).get("progress") or {}


def wait_phase(cluster: Cluster, namespace: str, name: str, *phases: str, timeout: float = 300) -> dict:
    """Wait until the job's phase is one of `phases`; fail early (with conditions) if it ends elsewhere."""

    def reached() -> dict | None:
        st = status(cluster, namespace, name)
        phase = st.get("phase")
        if phase in phases:
            return st
        if phase in TERMINAL:
            raise AssertionError(f"job {namespace}/{name} ended {phase}, wanted {phases}: {st.get('conditions')}")
        return None

    return wait_for(reached, timeout=timeout, what=f"job {namespace}/{name} to reach {'/'.join(phases)}")


def node_pods(cluster: Cluster, namespace: str, name: str) -> list[client.V1Pod]:
    pods = client.CoreV1Api(cluster.api_client).list_namespaced_pod(
        namespace, label_selector=f"llmtrain.dev/job-name={name}"
    )
    return [p for p in pods.items if p.metadata.deletion_timestamp is None]


def trainer_processes(job_name: str, *, workers_only: bool = True) -> Iterator[int]:
    """PIDs on this machine running the given job's trainer (the test bed runs pods as local processes).

    The operator puts LLMTRAIN_JOB_NAME in every node pod's environment; a worker's command line runs
    `-m llmtrain_trainer` while torchrun's agent runs the `torchrun` script.
    """
    needle = f"LLMTRAIN_JOB_NAME={job_name}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle not in environ or b"llmtrain_trainer" not in cmdline:
            continue
        if workers_only and b"torchrun" in cmdline:
            continue
        yield int(entry.name)


def kill_one_worker(cluster: Cluster, namespace: str, job_name: str) -> str:
    """SIGKILL one trainer worker process of the job, the way an OOM kill or a crashed rank would look."""
    if cluster.is_testbed:
        pids = sorted(trainer_processes(job_name))
        assert pids, f"no trainer worker process of {job_name} on this machine"
        os.kill(pids[-1], signal.SIGKILL)
        return f"pid {pids[-1]}"
    pod = f"{job_name}-node-1"
    script = (
        "import os,signal\n"
        "for p in os.listdir('/proc'):\n"
        "    if p.isdigit():\n"
        "        c=open(f'/proc/{p}/cmdline','rb').read()\n"
        "        if b'llmtrain_trainer' in c and b'torchrun' not in c:\n"
        "            os.kill(int(p), signal.SIGKILL); break\n"
    )
    cluster.kubectl("-n", namespace, "exec", pod, "-c", "trainer", "--", "python", "-c", script)
    return f"a worker in {pod}"


def trainer_logs(cluster: Cluster, namespace: str, job_name: str) -> dict[str, str]:
    """Each started node pod's trainer log by pod name ("" while a just-restarted container has printed nothing:
    the client reads an empty log as None); pods whose container has not started are left out."""
    core = client.CoreV1Api(cluster.api_client)
    logs = {}
    for pod in sorted(node_pods(cluster, namespace, job_name), key=lambda p: p.metadata.name):
        try:
            log = core.read_namespaced_pod_log(pod.metadata.name, namespace, container="trainer")
            logs[pod.metadata.name] = log or ""
        except client.ApiException:
            continue
    return logs


def rank0_log(cluster: Cluster, namespace: str, job_name: str) -> str:
    """The log of the node pod that hosts global rank 0 (c10d rendezvous does not promise it is node 0)."""
    for log in trainer_logs(cluster, namespace, job_name).values():
        if f"[llmtrain job={job_name} rank=0]" in log:
            return log
    return ""


def resumed_from_step(cluster: Cluster, namespace: str, job_name: str) -> int | None:
    """The checkpoint step the current gang loaded, from rank 0's log (`checkpoint_loaded checkpoint_step=N`)."""
    found = re.findall(r"checkpoint_loaded checkpoint_step=(\d+)", rank0_log(cluster, namespace, job_name))
    return int(found[-1]) if found else None


def claim_directory(cluster: Cluster, namespace: str, claim: str) -> Path:
    """The host directory behind a bound claim (the test bed's hostPath provisioner)."""
    core = client.CoreV1Api(cluster.api_client)
    pvc = core.read_namespaced_persistent_volume_claim(claim, namespace)
    pv = core.read_persistent_volume(pvc.spec.volume_name)
    assert pv.spec.host_path is not None, f"PV {pv.metadata.name} is not a hostPath volume"
    return Path(pv.spec.host_path.path)


def complete_checkpoints(directory: Path) -> list[str]:
    """Names of the complete checkpoints the trainer left (its layout: docs/trainer.md)."""
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.rglob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
