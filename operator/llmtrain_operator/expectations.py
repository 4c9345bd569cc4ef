"""Remember our own recent pod creates and deletes until the watch reports them.

kopf's pod index lags the API by a watch round-trip; without this, a reconcile triggered in that window would see a
just-created pod as missing (and POST it again, wasting a write on AlreadyExists) or a just-deleted pod as alive.
Entries expire after `ttl` so a lost watch event cannot wedge a job.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from .observe import PodView


@dataclass
class Expectations:
    ttl: timedelta = timedelta(seconds=30)
    _created: dict[str, tuple[PodView, datetime]] = field(default_factory=dict)
    _deleted: dict[tuple[str, int], datetime] = field(default_factory=dict)

    def created(self, pod: PodView, now: datetime) -> None:
        self._created[pod.name] = (pod, now)

    def deleted(self, name: str, attempt: int, now: datetime) -> None:
        self._deleted[(name, attempt)] = now

    def merge(self, indexed: list[PodView], now: datetime) -> list[PodView]:
        """The index's pods, plus created-but-unseen ones, with deleted-but-still-listed ones marked terminating."""
        self._expire(now)
        by_name = {p.name: p for p in indexed}
        out = []
        for p in indexed:
            if (p.name, p.attempt) in self._deleted and not p.terminating:
                p = replace(p, terminating=True)
            out.append(p)
            expected = self._created.get(p.name)
            if expected and expected[0].attempt == p.attempt:
                del self._created[p.name]  # the watch caught up
        for name, (pod, _) in list(self._created.items()):
            if name not in by_name:
                out.append(pod)
        live = {(p.name, p.attempt) for p in indexed}
        for key in [k for k in self._deleted if k not in live]:
            del self._deleted[key]  # gone from the index: the deletion is complete
        return out

    def _expire(self, now: datetime) -> None:
        for name in [n for n, (_, t) in self._created.items() if now - t > self.ttl]:
            del self._created[name]
        for key in [k for k, t in self._deleted.items() if now - t > self.ttl]:
            del self._deleted[key]
