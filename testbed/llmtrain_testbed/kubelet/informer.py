"""A list+watch cache of one resource, relisted periodically so every decision is level-triggered."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .api import Api, ApiError

log = logging.getLogger("testbed.kubelet.informer")

Key = tuple[str, str]


def key_of(obj: dict) -> Key:
    meta = obj.get("metadata", {})
    return meta.get("namespace", ""), meta.get("name", "")


class Informer:
    """Keeps `objects` in sync with the API; calls `on_change()` (no arguments) after every update."""

    def __init__(
        self,
        api: Api,
        path: str,
        on_change: Callable[[], None],
        stop: threading.Event,
        relist_s: float = 30,
    ) -> None:
        self.api = api
        self.path = path
        self.on_change = on_change
        self.stop = stop
        self.relist_s = relist_s
        self._lock = threading.Lock()
        self._objects: dict[Key, dict] = {}
        self.synced = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"informer{path}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self._objects.values())

    def get(self, key: Key) -> dict | None:
        with self._lock:
            return self._objects.get(key)

    def _relist(self) -> str:
        listing = self.api.get(self.path)
        with self._lock:
            self._objects = {key_of(o): o for o in listing.get("items", [])}
        self.synced.set()
        self.on_change()
        return listing["metadata"]["resourceVersion"]

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                resource_version = self._relist()
                listed_at = time.monotonic()
                while not self.stop.is_set() and time.monotonic() - listed_at < self.relist_s:
                    resource_version = self._watch_once(resource_version)
            except ApiError as exc:
                if exc.status != 410:
                    log.warning("watch %s failed: %s; relisting", self.path, exc)
                    self.stop.wait(1)
            except Exception as exc:  # the API server may be restarting; keep trying
                log.warning("list/watch %s failed: %s; retrying", self.path, exc)
                self.stop.wait(1)

    def _watch_once(self, resource_version: str) -> str:
        for event in self.api.watch(self.path, resource_version, timeout_s=int(self.relist_s)):
            if self.stop.is_set():
                break
            kind, obj = event.get("type"), event.get("object", {})
            if kind == "ERROR":
                raise ApiError(obj.get("code", 500), "WATCH", self.path, obj.get("message", ""))
            resource_version = obj.get("metadata", {}).get("resourceVersion", resource_version)
            if kind == "BOOKMARK":
                continue
            with self._lock:
                if kind == "DELETED":
                    self._objects.pop(key_of(obj), None)
                else:
                    self._objects[key_of(obj)] = obj
            self.on_change()
        return resource_version
