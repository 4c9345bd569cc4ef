"""What the memory preflight needs to know about nodes: which have GPUs, and how much memory each GPU has.

GPU feature discovery (part of the NVIDIA GPU operator) labels a node `nvidia.com/gpu.memory=<MiB per GPU>`.
handlers.py keeps a kopf index of GpuNode views keyed by node name; the controller reduces it, per job, to the
memory one GPU of the job's pods would get: the smallest among the nodes the pods may land on (those with
allocatable nvidia.com/gpu that match spec.scheduling.nodeSelector). Affinity and taints are not looked at.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .constants import GPU_MEMORY_LABEL, GPU_RESOURCE

MIB = 2**20


@dataclass(frozen=True)
class GpuNode:
    """A node with GPUs as the preflight sees it."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    gpus: int = 0  # allocatable nvidia.com/gpu (capacity when the kubelet reports no allocatable)
    memory_mib: int | None = None  # nvidia.com/gpu.memory, None when absent or not a number


def gpu_node(body: Mapping[str, Any]) -> GpuNode | None:
    """The view of a Node object; None for a node without GPUs (it can never host a GPU pod)."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    raw = (status.get("allocatable") or {}).get(GPU_RESOURCE, (status.get("capacity") or {}).get(GPU_RESOURCE))
    gpus = _integer(raw) or 0
    if gpus < 1:
        return None
    labels = dict(meta.get("labels") or {})
    memory = _integer(labels.get(GPU_MEMORY_LABEL))
    return GpuNode(meta.get("name", ""), labels, gpus, memory if memory and memory > 0 else None)


def gpu_memory_bytes(nodes: Iterable[GpuNode], node_selector: Mapping[str, str]) -> int | None:
    """Memory of one GPU on the worst node the job's pods may get: the smallest declared among the GPU nodes that
    match `node_selector`. None when none of them declares it (the preflight is skipped)."""
    declared = [
        node.memory_mib
        for node in nodes
        if node.gpus > 0
        and node.memory_mib is not None
        and all(node.labels.get(key) == value for key, value in node_selector.items())
    ]
    return min(declared) * MIB if declared else None


def _integer(raw: object) -> int | None:
    try:
        return int(str(raw))
    except (TypeError, ValueError):
        return None
