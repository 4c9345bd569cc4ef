"""The process group this rank runs in, and the SIGTERM flag every rank acts on at the same step."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from datetime import timedelta
from types import FrameType

import torch
import torch.distributed as dist

from .config import ConfigError


@dataclass(frozen=True)
class Runtime:
    """Where this process sits: its ranks (global, on the node, the node's) and its device."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    device: torch.device


def setup_distributed(collective_timeout_seconds: float | None = None) -> Runtime:
    """Join torchrun's process group, or make a one-process group when run as plain `python -m`.

    Backend: $LLMTRAIN_BACKEND if set, else nccl when CUDA is available, else gloo (CPU). A collective that waits
    longer than `collective_timeout_seconds` (torch's default when None) fails and ends the process, so a hung rank
    cannot hold the gang forever.
    """
    backend = os.environ.get("LLMTRAIN_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend not in ("nccl", "gloo"):
        raise ConfigError(f"LLMTRAIN_BACKEND: {backend!r} is not 'nccl' or 'gloo'")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = {"timeout": timedelta(seconds=collective_timeout_seconds)} if collective_timeout_seconds else {}
    if "RANK" in os.environ:
        device_id = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, **device_id, **timeout)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, **timeout)
    world_size = dist.get_world_size()
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    node_rank = int(os.environ.get("GROUP_RANK", str(dist.get_rank() // local_world_size)))
    return Runtime(dist.get_rank(), local_rank, world_size, local_world_size, node_rank, device)


class StopRequest:
    """SIGTERM sets a flag; the loop acts on it at the next step boundary, on every rank at the same step."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
