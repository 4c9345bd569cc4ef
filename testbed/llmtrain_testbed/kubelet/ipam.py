"""Pod IP allocation from 10.88.0.0/16, one file per address in the state dir (a restarted kubelet sees them)."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable
from pathlib import Path

NETWORK = ipaddress.ip_network("10.88.0.0/16")
FIRST_HOST = 2  # .0.1 is the bridge (host) address


def pick_free(used: set[int], after: int, size: int = NETWORK.num_addresses) -> int | None:
    """The next free host offset after `after` (round robin, so a freed address is not reused at once)."""
    span = size - 1 - FIRST_HOST  # exclude the network and broadcast addresses and .0.1
    for step in range(span):
        offset = FIRST_HOST + (after - FIRST_HOST + 1 + step) % span
        if offset not in used:
            return offset
    return None


class Ipam:
    """Allocates and releases pod addresses; <dir>/<ip> holds the owning pod's uid."""

    def __init__(self, directory: Path, in_use: Callable[[], set[str]] = set) -> None:
        self.dir = directory
        self.in_use = in_use  # addresses configured on the bridge by anyone (e.g. a second kubelet)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._last = FIRST_HOST - 1

    def _offsets(self) -> dict[int, str]:
        out = {}
        for path in self.dir.iterdir():
            try:
                out[int(ipaddress.ip_address(path.name)) - int(NETWORK.network_address)] = path.read_text().strip()
            except ValueError:
                continue
        return out

    def allocate(self, owner: str) -> str:
        with self._lock:
            taken = self._offsets()
            for offset, uid in taken.items():
                if uid == owner:
                    return str(NETWORK.network_address + offset)
            others = {int(ipaddress.ip_address(ip)) - int(NETWORK.network_address) for ip in self.in_use()}
            offset = pick_free(set(taken) | others, self._last)
            if offset is None:
                raise RuntimeError(f"no free pod address left in {NETWORK}")
            self._last = offset
            ip = str(NETWORK.network_address + offset)
            (self.dir / ip).write_text(owner)
            return ip

    def release(self, owner: str) -> None:
        with self._lock:
            for path in self.dir.iterdir():
                if path.read_text().strip() == owner:
                    path.unlink(missing_ok=True)

    def owners(self) -> set[str]:
        return set(self._offsets().values())

    def reset(self) -> None:
        """Forget every allocation (at kubelet start, after all leftover sandboxes were torn down)."""
        with self._lock:
            for path in self.dir.iterdir():
                path.unlink(missing_ok=True)
