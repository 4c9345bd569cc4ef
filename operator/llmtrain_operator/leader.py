"""Leader election on a coordination.k8s.io/v1 Lease: of several operator replicas, one acts, the others wait warm.

The algorithm is client-go's (tools/leaderelection): the holder renews the Lease every RETRY_PERIOD; a candidate
takes it over when the holder released it (empty holderIdentity) or when the Lease has not changed for the holder's
leaseDurationSeconds *as measured on the candidate's own clock* since it last saw it change, so clock skew between
replicas never shortens a lease. Every write is conditional on the resourceVersion read, so two candidates cannot
both win. A leader that cannot renew for RENEW_DEADLINE (shorter than the lease) steps down before anyone may take
over. With the defaults a standby takes over at most about 14 s after the leader vanished (10 s lease, seen at most
2 s late, tried every 2 s), and within 2 s of a leader that released the Lease on shutdown.

`decide` is the pure decision; `LeaderElector` does the reads and writes through the operator's client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from .kubeapi import ApiError

log = logging.getLogger("llmtrain_operator")

LEASE_DURATION_SECONDS = 10
RETRY_PERIOD_SECONDS = 2.0
RENEW_DEADLINE_SECONDS = 7.0


def micro_time(moment: datetime) -> str:
    """A Lease's MicroTime: RFC 3339 with microseconds."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Lease:
    """What a candidate needs to know of the Lease object."""

    holder: str  # "" when released
    duration: int
    transitions: int
    resource_version: str | None
    renew_time: str | None = None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Lease:
        spec = body.get("spec") or {}
        return cls(
            holder=spec.get("holderIdentity") or "",
            duration=int(spec.get("leaseDurationSeconds") or LEASE_DURATION_SECONDS),
            transitions=int(spec.get("leaseTransitions") or 0),
            resource_version=(body.get("metadata") or {}).get("resourceVersion"),
            renew_time=spec.get("renewTime"),
        )


@dataclass(frozen=True)
class Step:
    """What to do this round: create the Lease, renew ours, take over a free or expired one, or wait."""

    action: Literal["create", "renew", "take_over", "wait"]
    spec: dict[str, Any] | None = None  # the Lease spec to write


def decide(lease: Lease | None, me: str, now: datetime, unchanged_since: datetime, duration: int) -> Step:
    """The election's next step for candidate `me`.

    `unchanged_since`: when this candidate first saw the Lease as it is now (its own clock); `duration`: the lease
    this candidate writes when it holds it.
    """
    stamp = micro_time(now)
    if lease is None:
        spec = {"holderIdentity": me, "leaseDurationSeconds": duration, "acquireTime": stamp, "renewTime": stamp}
        return Step("create", {**spec, "leaseTransitions": 0})
    if lease.holder == me:
        return Step("renew", {"holderIdentity": me, "leaseDurationSeconds": duration, "renewTime": stamp})
    expired = (now - unchanged_since).total_seconds() >= lease.duration
    if not lease.holder or expired:
        spec = {"holderIdentity": me, "leaseDurationSeconds": duration, "acquireTime": stamp, "renewTime": stamp}
        return Step("take_over", {**spec, "leaseTransitions": lease.transitions + 1})
    return Step("wait")


def should_step_down(last_renewed: datetime | None, now: datetime, renew_deadline: float) -> bool:
    """A leader that has not renewed for renew_deadline stops acting (before the lease can expire for others)."""
    return last_renewed is None or (now - last_renewed).total_seconds() > renew_deadline


class LeaseClient(Protocol):
    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def create(self, manifest: dict[str, Any]) -> bool: ...

    async def merge_patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]: ...


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class LeaderElector:
    """Campaigns for one Lease and reports every change of leadership to `on_change`."""

    namespace: str
    name: str
    identity: str
    on_change: Callable[[bool], None] = lambda leading: None  # the Controller sets its own
    duration: int = LEASE_DURATION_SECONDS
    retry_period: float = RETRY_PERIOD_SECONDS
    renew_deadline: float = RENEW_DEADLINE_SECONDS
    clock: Callable[[], datetime] = _utc_now
    leading: bool = False
    _seen: tuple[str, str | None] | None = None  # (holder, resourceVersion) as last read
    _seen_since: datetime | None = None
    _renewed: datetime | None = None
    _stopped: bool = field(default=False, repr=False)

    async def run(self, client: LeaseClient) -> None:
        while not self._stopped:
            await self.campaign(client)
            await asyncio.sleep(self.retry_period)

    async def campaign(self, client: LeaseClient) -> bool:
        """One round: read the Lease, act on `decide`, update `leading`. True while this replica leads."""
        now = self.clock()
        try:
            won = await self._round(client, now)
        except Exception as error:  # whatever went wrong, the loop must go on renewing or stand by
            log.warning("leader election: lease %s/%s: %r", self.namespace, self.name, error)
            won = None  # unknown: keep the current role until the renew deadline passes
        if won:
            self._renewed = now
            self._set(True)
        elif won is False or should_step_down(self._renewed, now, self.renew_deadline):
            self._set(False)
        return self.leading

    async def _round(self, client: LeaseClient, now: datetime) -> bool:
        body = await client.get("Lease", self.namespace, self.name)
        lease = Lease.from_body(body) if body is not None else None
        seen = (lease.holder, lease.resource_version) if lease else None
        if seen != self._seen or self._seen_since is None:
            self._seen, self._seen_since = seen, now
        step = decide(lease, self.identity, now, self._seen_since, self.duration)
        if step.action == "wait":
            return False
        if step.action == "create":
            manifest = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": step.spec,
            }
            return await client.create(manifest)  # False: another candidate created it first
        assert lease is not None
        patch = {"metadata": {"resourceVersion": lease.resource_version}, "spec": step.spec}
        try:
            await client.merge_patch("Lease", self.namespace, self.name, patch)
        except ApiError as error:
            if error.status == 409:  # another candidate wrote first
                return False
            raise
        if step.action == "take_over":
            log.info(
                "leader election: %s took over lease %s/%s from %r",
                self.identity,
                self.namespace,
                self.name,
                lease.holder,
            )
        return True

    async def release(self, client: LeaseClient) -> None:
        """On shutdown: give the Lease up so a standby takes over at its next try instead of after the lease."""
        self._stopped = True
        if not self.leading:
            return
        self._set(False)
        try:
            body = await client.get("Lease", self.namespace, self.name)
            if body is not None and Lease.from_body(body).holder == self.identity:
                version = (body.get("metadata") or {}).get("resourceVersion")
                patch = {"metadata": {"resourceVersion": version}, "spec": {"holderIdentity": ""}}
                await client.merge_patch("Lease", self.namespace, self.name, patch)
        except (ApiError, OSError, TimeoutError) as error:
            log.warning("leader election: could not release lease %s/%s: %s", self.namespace, self.name, error)

    def _set(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            log.info("leader election: %s %s", self.identity, "is the leader" if leading else "is standing by")
            self.on_change(leading)
