"""Remember our own recent pod creates and deletes until the watch reports them.

kopf's pod index lags the API by a watch round-trip; without this, a reconcile triggered in that window would see a
just-created pod as missing (and POST it again, wasting a write on AlreadyExists) or a just-deleted pod as alive.
Entries expire after `ttl` so a lost watch event cannot wedge a job: five minutes, as in Kubernetes' own controllers
(ExpectationsTimeout); at 1,000 jobs on a loaded API server the index lagged over 30 s, and a 30 s TTL re-POSTed
thousands of pods that existed (409).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from .observe import PodView


@dataclass
class Expectations:
    ttl: timedelta = timedelta(minutes=5)
    _created: dict[str, tuple[PodView, datetime]] = field(default_factory=dict)
    _deleted: dict[tuple[str, int], datetime] = field(default_factory=dict)

    def created(self, pod: PodView, now: datetime) -> None:
        self._created[pod.name] = (pod, now)

    def deleted(self, name: str, attempt: int, now: datetime) -> None:
        self._deleted[(name, attempt)] = now

    def merge(self, indexed: list[PodView], now: datetime) -> list[PodView]:
        """The index's pods, plus created-but-unseen ones, with deleted-but-still-listed ones marked terminating."""
        self._expire(now)
        indexed_names = {pod.name for pod in indexed}
        merged = []
        for pod in indexed:
            if (pod.name, pod.attempt) in self._deleted and not pod.terminating:
                pod = replace(pod, terminating=True)
            merged.append(pod)
            expected = self._created.get(pod.name)
            if expected and expected[0].attempt == pod.attempt:
                del self._created[pod.name]  # the watch caught up
        merged += [pod for name, (pod, _) in self._created.items() if name not in indexed_names]
        listed = {(pod.name, pod.attempt) for pod in indexed}
        for key in [key for key in self._deleted if key not in listed]:
            del self._deleted[key]  # gone from the index: the deletion is complete
        return merged

    def _expire(self, now: datetime) -> None:
        for name in [name for name, (_, since) in self._created.items() if now - since > self.ttl]:
            del self._created[name]
        for key in [key for key, since in self._deleted.items() if now - since > self.ttl]:
            del self._deleted[key]
