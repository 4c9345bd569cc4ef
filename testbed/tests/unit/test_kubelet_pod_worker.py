"""A pod worker needs only its PodHost: here one is built from plain values and functions (no Kubelet, no API
server), and the container process is replaced by a recorder, so nothing runs and no root is needed."""

from __future__ import annotations

from pathlib import Path

import pytest
from llmtrain_testbed.kubelet import pods
from llmtrain_testbed.kubelet.pods import PodHost, PodWorker

HOST_IP = "10.88.0.1"
POD_IP = "10.88.0.7"


class RecordingApi:
    """The two calls a worker makes itself: its pod's status patch and the final delete."""

    def __init__(self) -> None:
        self.patches: list[tuple[str, dict]] = []
        self.deletes: list[tuple[str, dict]] = []

    def merge_patch(self, path: str, body: dict) -> dict:
        self.patches.append((path, body))
        return body

    def delete(self, path: str, body: dict) -> None:
        self.deletes.append((path, body))


class RecordingProcess:
    """Stands in for ContainerProcess: keeps the LaunchSpec it was given instead of starting anything."""

    launched: list[RecordingProcess] = []

    def __init__(self, spec: pods.LaunchSpec, run_dir: Path, log_path: Path) -> None:
        self.spec, self.run_dir, self.log_path = spec, run_dir, log_path
        self.pid = 4242
        RecordingProcess.launched.append(self)

    def poll(self) -> int | None:
        return None


def host_from(tmp_path: Path, api: RecordingApi, objects: dict[tuple[str, str, str], dict]) -> PodHost:
    return PodHost(
        api=api,  # type: ignore[arg-type]  # duck-typed: the worker calls merge_patch and delete
        state_dir=tmp_path,
        host_ip=HOST_IP,
        allocatable={"cpu": "64", "memory": "512Gi"},
        shutdown_grace_s=5.0,
        stopping=lambda: False,
        allocate_ip=lambda uid: POD_IP,
        release_ip=lambda uid: None,
        lookup=lambda plural, namespace: lambda name: objects.get((plural, namespace, name)),
        render_hosts=lambda pod, pod_ip: f"{pod_ip}\t{pod['metadata']['name']}\n",
        base_env=lambda pod: {"PATH": "/venv/bin:/usr/bin", "HOSTNAME": pod["metadata"]["name"]},
    )


def pod_with_env(env: list[dict]) -> dict:
    container = {"name": "main", "image": "python:3.11-slim", "command": ["python", "-c", "pass"], "env": env}
    return {
        "metadata": {"namespace": "ns", "name": "trainer-0", "uid": "uid-1"},
        "spec": {"nodeName": "llmtrain-node-0", "restartPolicy": "Never", "containers": [container]},
    }


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[RecordingProcess]:
    RecordingProcess.launched = []
    monkeypatch.setattr(pods, "ContainerProcess", RecordingProcess)
    return RecordingProcess.launched


def with_sandbox(worker: PodWorker) -> PodWorker:
    """As if _ensure_sandbox had run (it needs root for the network namespace)."""
    worker.ip, worker.netns, worker.volumes = POD_IP, "llmt-uid-1", {}
    worker.pod_dir.mkdir(parents=True)
    return worker


def test_the_worker_writes_its_status_through_the_hosts_api_once_per_change(tmp_path: Path):
    api = RecordingApi()
    worker = PodWorker(host_from(tmp_path, api, {}), pod_with_env([]))
    assert worker.pod_dir == tmp_path / "pods" / "ns_trainer-0_uid-1"

    worker._sync_status()
    worker._sync_status()  # nothing changed: nothing sent

    assert len(api.patches) == 1
    path, body = api.patches[0]
    assert path == "/api/v1/namespaces/ns/pods/trainer-0/status"
    assert body["metadata"] == {"uid": "uid-1"}
    assert body["status"]["phase"] == "Pending"
    assert body["status"]["hostIP"] == HOST_IP


def test_a_container_starts_from_the_hosts_base_env_lookups_and_node_facts(
    tmp_path: Path, recorded: list[RecordingProcess]
):
    env = [
        {"name": "NODE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
        {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "SETTING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "setting"}}},
        {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
    ]
    objects = {("configmaps", "ns", "cfg"): {"data": {"setting": "on"}}}
    worker = with_sandbox(PodWorker(host_from(tmp_path, RecordingApi(), objects), pod_with_env(env)))
    container = worker.containers[0]

    worker._start(container)

    [process] = recorded
    assert process.spec.argv == ["python", "-c", "pass"]
    assert process.spec.env["HOSTNAME"] == "trainer-0"  # from base_env
    assert process.spec.env["NODE_IP"] == HOST_IP
    assert process.spec.env["MY_IP"] == POD_IP
    assert process.spec.env["SETTING"] == "on"  # from lookup("configmaps", "ns")
    assert process.spec.env["CPUS"] == "64"  # no limit: the node's allocatable
    assert process.spec.netns_path.endswith("/llmt-uid-1")
    assert any(m.source == str(worker.pod_dir / "hosts") and m.target == "/etc/hosts" for m in process.spec.mounts)
    assert process.log_path == worker.pod_dir / "main" / "0.log"
    assert container.state.running_since is not None
    assert container.state.container_id == "process://4242"


def test_a_missing_config_map_keeps_the_container_waiting_without_a_process(
    tmp_path: Path, recorded: list[RecordingProcess]
):
    env = [{"name": "SETTING", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "setting"}}}]
    worker = with_sandbox(PodWorker(host_from(tmp_path, RecordingApi(), {}), pod_with_env(env)))
    container = worker.containers[0]

    worker._start(container)

    assert recorded == []
    assert container.state.waiting_reason == "CreateContainerConfigError"
    assert "absent" in container.state.waiting_message


def test_the_hosts_file_is_what_the_host_renders(tmp_path: Path):
    worker = with_sandbox(PodWorker(host_from(tmp_path, RecordingApi(), {}), pod_with_env([])))

    worker.refresh_hosts()

    assert (worker.pod_dir / "hosts").read_text() == f"{POD_IP}\ttrainer-0\n"
