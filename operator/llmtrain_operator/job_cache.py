"""The latest known body of one job, so that a reconcile needs no GET (at 1,000 jobs, a GET per reconcile was most
of the operator's API traffic and of its reconcile lag).

Bodies come from the watch, from our own status writes (the API server answers with the whole object) and from
GETs; the cache keeps the newest. Resource versions are comparable since Kubernetes 1.35 (KEP-5504, GA): decimal
strings without leading zeros, compared as numbers. Where one is not (an API server older than that with another
storage), the cache cannot tell old from new and keeps nothing: every reconcile GETs, as before.

A body can still be stale (the watch has not yet delivered someone else's edit); that is what every informer-based
controller reconciles from: the status write is conditional on the version, so it conflicts, the cache forgets
the body and the job is read again; the edit's own watch event triggers another reconcile.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def resource_version(body: Mapping[str, Any]) -> str | None:
    return (body.get("metadata") or {}).get("resourceVersion")


def compare_versions(a: str | None, b: str | None) -> int | None:
    """-1, 0 or 1 as version a is older than, the same as or newer than b; None when they cannot be compared."""
    if not (comparable(a) and comparable(b)):
        return None
    assert a is not None and b is not None
    key_a, key_b = (len(a), a), (len(b), b)
    return (key_a > key_b) - (key_a < key_b)


def comparable(version: str | None) -> bool:
    """A well-formed version per KEP-5504: a positive decimal number without leading zeros."""
    return bool(version) and version.isdigit() and version.isascii() and version[0] != "0"  # type: ignore[union-attr]


def slim(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body without metadata.managedFields (the largest part of a job's body, and never read here)."""
    meta = {key: value for key, value in (body.get("metadata") or {}).items() if key != "managedFields"}
    return {**body, "metadata": meta}


@dataclass
class CachedJob:
    body: dict[str, Any] | None = None  # None: read it from the API server

    def offer(self, body: Mapping[str, Any]) -> None:
        """A body from the watch, a write or a read: kept unless the cached one is newer."""
        if self.body is None:
            self.body = slim(body) if comparable(resource_version(body)) else None
            return
        order = compare_versions(resource_version(body), resource_version(self.body))
        if order is None:
            self.body = None
        elif order >= 0:
            self.body = slim(body)

    def invalidate(self) -> None:
        """A conditional write conflicted: the body is stale."""
        self.body = None
