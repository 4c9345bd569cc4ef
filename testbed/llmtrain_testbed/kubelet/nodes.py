"""Fake GPU nodes: registration, node status and Lease heartbeats in kube-node-lease.

The nodes are what the real kube-scheduler binds to and the node lifecycle controller watches; capacity is
declared (not measured), so a 2-core machine can host two 8-GPU nodes.
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from .api import Api, ApiError

log = logging.getLogger("testbed.kubelet.nodes")

LEASE_DURATION_S = 40
LEASE_RENEW_S = 10
STATUS_REFRESH_S = 60
KUBELET_VERSION = "v1.37.2-llmtrain-process-kubelet"


@dataclass
class NodeConfig:
    """What every fake node declares."""

    cpu: str = "64"
    memory: str = "512Gi"
    pods: str = "110"
    ephemeral_storage: str = "1Ti"
    gpus: int = 8
    gpu_product: str = "NVIDIA-H200"
    gpu_memory_mib: int = 143771
    address: str = "10.88.0.1"
    first_port: int = 10250
    name_prefix: str = "llmtrain-node"
    taints: list[dict] = field(default_factory=list)


def node_name(index: int, prefix: str = "llmtrain-node") -> str:
    return f"{prefix}-{index}"


def _now(micro: bool = False) -> str:
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ"
    return dt.datetime.now(dt.UTC).strftime(fmt)


def capacity(cfg: NodeConfig) -> dict[str, str]:
    return {
        "cpu": cfg.cpu,
        "memory": cfg.memory,
        "pods": cfg.pods,
        "ephemeral-storage": cfg.ephemeral_storage,
        "nvidia.com/gpu": str(cfg.gpus),
    }


def node_object(index: int, cfg: NodeConfig) -> dict:
    """The Node as registered: labels a GPU node carries with the NVIDIA GPU feature discovery installed."""
    name = node_name(index, cfg.name_prefix)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": "llmtrain-process",
                "llmtrain.dev/process-kubelet": "true",
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": cfg.gpu_product,
                "nvidia.com/gpu.memory": str(cfg.gpu_memory_mib),
                "nvidia.com/gpu.count": str(cfg.gpus),
            },
        },
        "spec": {"taints": cfg.taints} if cfg.taints else {},
    }


def node_status(index: int, cfg: NodeConfig, now: str) -> dict:
    """status for a healthy node; `now` is the heartbeat time."""

    def cond(ctype: str, status: str, reason: str, message: str) -> dict:
        return {
            "type": ctype,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }

    cap = capacity(cfg)
    return {
        "capacity": cap,
        "allocatable": cap,
        "conditions": [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            cond("Ready", "True", "KubeletReady", "process kubelet is posting ready status"),
        ],
        # No Hostname address: the API server would try to resolve it before the InternalIP (kubectl logs).
        "addresses": [{"type": "InternalIP", "address": cfg.address}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.first_port + index}},
        "nodeInfo": {
            "machineID": f"llmtrain-node-{index}",
            "systemUUID": f"llmtrain-node-{index}",
            "bootID": f"llmtrain-node-{index}",
            "kernelVersion": platform.release(),
            "osImage": "llmtrain process kubelet (no containers)",
            "containerRuntimeVersion": "process://1",
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
    }


def lease_object(name: str, node_uid: str, now_micro: str) -> dict:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "namespace": "kube-node-lease",
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid}],
        },
        "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION_S, "renewTime": now_micro},
    }


class NodeAgent:
    """Registers the nodes, renews their Leases every 10 s and refreshes their status every 60 s."""

    def __init__(
        self, api: Api, count: int, cfg: NodeConfig, stop: threading.Event, lost: Callable[[], set[str]] = set
    ) -> None:
        self.api = api
        self.lost = lost  # names of nodes that stopped answering (a lost machine sends no heartbeat)
        self.count = count
        self.cfg = cfg
        self.stop = stop
        self.uids: dict[str, str] = {}
        self.thread = threading.Thread(target=self._run, name="node-agent", daemon=True)

    def names(self) -> list[str]:
        return [node_name(i, self.cfg.name_prefix) for i in range(self.count)]

    def register(self) -> None:
        for i in range(self.count):
            self._register(i)

    def _register(self, index: int) -> None:
        name = node_name(index, self.cfg.name_prefix)
        body = node_object(index, self.cfg)
        try:
            node = self.api.create("/api/v1/nodes", body)
            log.info("node=%s: registered", name)
        except ApiError as exc:
            if exc.status != 409:
                raise
            node = self.api.merge_patch(f"/api/v1/nodes/{name}", {"metadata": {"labels": body["metadata"]["labels"]}})
        self.uids[name] = node["metadata"]["uid"]
        self.api.merge_patch(f"/api/v1/nodes/{name}/status", {"status": node_status(index, self.cfg, _now())})

    def _renew_lease(self, index: int) -> None:
        name = node_name(index, self.cfg.name_prefix)
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
        try:
            self.api.merge_patch(path, {"spec": {"holderIdentity": name, "renewTime": _now(micro=True)}})
        except ApiError as exc:
            if exc.status != 404:
                raise
            self.api.create(
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                lease_object(name, self.uids.get(name, ""), _now(micro=True)),
            )

    def _refresh_status(self, index: int) -> None:
        name = node_name(index, self.cfg.name_prefix)
        try:
            self.api.merge_patch(f"/api/v1/nodes/{name}/status", {"status": node_status(index, self.cfg, _now())})
        except ApiError as exc:
            if exc.status != 404:
                raise
            log.warning("node=%s: node object was deleted; registering it again", name)
            self._register(index)

    def _run(self) -> None:
        ticks = 0
        while not self.stop.is_set():
            lost = self.lost()
            for i in range(self.count):
                if node_name(i, self.cfg.name_prefix) in lost:
                    continue
                try:
                    if ticks % (STATUS_REFRESH_S // LEASE_RENEW_S) == 0:
                        self._refresh_status(i)
                    self._renew_lease(i)
                except Exception as exc:
                    log.warning("node=%s: heartbeat failed: %s", node_name(i, self.cfg.name_prefix), exc)
            ticks += 1
            self.stop.wait(LEASE_RENEW_S)

    def start(self) -> None:
        self.thread.start()
