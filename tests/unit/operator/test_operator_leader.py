"""Leader election on a Lease: the pure decision, then two electors sharing one Lease (an in-memory API that
applies writes conditionally on resourceVersion, like the API server), then the Controller as leader and standby."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from llmtrain_operator.controller import Controller
from llmtrain_operator.kubeapi import ApiError
from llmtrain_operator.leader import (
    LEASE_DURATION_SECONDS,
    RENEW_DEADLINE_SECONDS,
    RETRY_PERIOD_SECONDS,
    LeaderElector,
    Lease,
    decide,
    micro_time,
    should_step_down,
)
from reconcile_inputs import SETTINGS

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def held_by(holder: str, transitions: int = 0) -> Lease:
    return Lease(holder=holder, duration=10, transitions=transitions, resource_version="7")


# ----- the decision -------------------------------------------------------------------------------------------------


def test_the_first_candidate_creates_the_lease_holding_it():
    step = decide(None, "a", T0, T0, 10)
    assert step.action == "create"
    assert step.spec == {
        "holderIdentity": "a",
        "leaseDurationSeconds": 10,
        "acquireTime": micro_time(T0),
        "renewTime": micro_time(T0),
        "leaseTransitions": 0,
    }


def test_the_holder_renews():
    step = decide(held_by("a"), "a", T0, T0 - timedelta(hours=1), 10)
    assert step.action == "renew" and step.spec["renewTime"] == micro_time(T0)


@pytest.mark.parametrize("unchanged_for", [0, 5, 9.9])
def test_a_candidate_waits_while_the_lease_is_live(unchanged_for):
    assert decide(held_by("a"), "b", T0, T0 - timedelta(seconds=unchanged_for), 10).action == "wait"


def test_a_candidate_takes_over_a_lease_unchanged_for_its_duration():
    step = decide(held_by("a", transitions=3), "b", T0, T0 - timedelta(seconds=10), 10)
    assert step.action == "take_over"
    assert step.spec["holderIdentity"] == "b" and step.spec["leaseTransitions"] == 4
    assert step.spec["acquireTime"] == micro_time(T0)


def test_a_released_lease_is_taken_over_at_once():
    assert decide(held_by(""), "b", T0, T0, 10).action == "take_over"


def test_expiry_is_measured_on_the_candidate_s_clock_not_from_the_holder_s_renew_time():
    # the holder's clock may be an hour behind: a renewTime an hour old means nothing until we saw no change
    stale_looking = Lease("a", 10, 0, "7", renew_time=micro_time(T0 - timedelta(hours=1)))
    assert decide(stale_looking, "b", T0, T0, 10).action == "wait"


def test_a_leader_steps_down_when_it_could_not_renew_before_the_deadline():
    assert not should_step_down(T0, T0 + timedelta(seconds=RENEW_DEADLINE_SECONDS), RENEW_DEADLINE_SECONDS)
    assert should_step_down(T0, T0 + timedelta(seconds=RENEW_DEADLINE_SECONDS + 0.1), RENEW_DEADLINE_SECONDS)
    assert RENEW_DEADLINE_SECONDS < LEASE_DURATION_SECONDS  # it stops before anyone else may start


# ----- two electors, one Lease --------------------------------------------------------------------------------------


class LeaseApi:
    """The Lease part of an API server: create is 409 when it exists, a patch naming an old resourceVersion 409."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.down = False
        self.version = 0

    def _check(self) -> None:
        if self.down:
            raise ApiError(503, {"message": "unavailable"}, "lease")

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self._check()
        return copy.deepcopy(self.lease)

    async def create(self, manifest: dict[str, Any]) -> bool:
        self._check()
        if self.lease is not None:
            return False
        self.version += 1
        self.lease = {
            **copy.deepcopy(manifest),
            "metadata": {**manifest["metadata"], "resourceVersion": str(self.version)},
        }
        return True

    async def merge_patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self._check()
        assert self.lease is not None
        if patch["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise ApiError(409, {"message": "the object has been modified"}, "patch Lease")
        self.version += 1
        self.lease["spec"].update(patch["spec"])
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)

    def holder(self) -> str | None:
        return self.lease["spec"]["holderIdentity"] if self.lease else None


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def elector(name: str, clock: Clock, changes: list[tuple[str, bool]]) -> LeaderElector:
    return LeaderElector("ops", "llmtrain-operator", name, lambda leading: changes.append((name, leading)), clock=clock)


def test_one_of_two_replicas_leads_and_the_other_stands_by_while_it_renews():
    api, clock, changes = LeaseApi(), Clock(), []
    a, b = elector("a", clock, changes), elector("b", clock, changes)

    async def scenario() -> None:
        assert await a.campaign(api) and not await b.campaign(api)
        for _ in range(30):  # a minute of renewals
            clock.advance(RETRY_PERIOD_SECONDS)
            assert await a.campaign(api) and not await b.campaign(api)

    asyncio.run(scenario())
    assert changes == [("a", True)] and api.holder() == "a"


def test_a_standby_takes_over_within_15_seconds_of_the_leader_vanishing():
    api, clock, changes = LeaseApi(), Clock(), []
    a, b = elector("a", clock, changes), elector("b", clock, changes)

    async def scenario() -> float:
        await a.campaign(api)
        await b.campaign(api)
        clock.advance(RETRY_PERIOD_SECONDS)
        await a.campaign(api)  # the leader's last renewal; then it is killed
        vanished = clock.now
        while not await b.campaign(api):
            clock.advance(RETRY_PERIOD_SECONDS)
        return (clock.now - vanished).total_seconds()

    took = asyncio.run(scenario())
    assert took <= 15 and api.holder() == "b" and api.lease["spec"]["leaseTransitions"] == 1
    assert changes == [("a", True), ("b", True)]


def test_a_released_lease_is_taken_over_at_the_standby_s_next_try():
    api, clock, changes = LeaseApi(), Clock(), []
    a, b = elector("a", clock, changes), elector("b", clock, changes)

    async def scenario() -> None:
        await a.campaign(api)
        await b.campaign(api)
        await a.release(api)  # shutdown
        clock.advance(RETRY_PERIOD_SECONDS)
        assert await b.campaign(api)

    asyncio.run(scenario())
    assert changes == [("a", True), ("a", False), ("b", True)]
    assert api.holder() == "b"


def test_two_candidates_racing_for_an_expired_lease_cannot_both_win():
    api, clock, changes = LeaseApi(), Clock(), []
    old = elector("old", clock, changes)
    b, c = elector("b", clock, changes), elector("c", clock, changes)

    async def scenario() -> list[bool]:
        await old.campaign(api)
        await b.campaign(api)
        await c.campaign(api)
        clock.advance(LEASE_DURATION_SECONDS)
        return list(await asyncio.gather(b.campaign(api), c.campaign(api)))

    assert sorted(asyncio.run(scenario())) == [False, True]
    assert api.holder() in ("b", "c")


def test_a_leader_cut_off_from_the_api_server_stands_by_before_its_lease_can_expire():
    api, clock, changes = LeaseApi(), Clock(), []
    a = elector("a", clock, changes)

    async def scenario() -> None:
        assert await a.campaign(api)
        api.down = True
        clock.advance(RETRY_PERIOD_SECONDS)
        assert await a.campaign(api)  # a blip: still leading
        clock.advance(RENEW_DEADLINE_SECONDS)
        assert not await a.campaign(api)  # past the renew deadline, before the lease duration

    asyncio.run(scenario())
    assert changes == [("a", True), ("a", False)]


# ----- the Controller as leader and standby -------------------------------------------------------------------------


def test_a_standby_controller_notes_jobs_but_reconciles_only_once_it_leads():
    calls: list[Any] = []

    def decide_spy(job, observed, now, settings, progress):  # type: ignore[no-untyped-def]
        calls.append(job.name)
        raise RuntimeError("stop here")  # the reconcile ran: enough for this test

    class Jobs:
        async def serves(self, api_version: str, resource: str) -> bool:
            return False

        async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
            return {"metadata": {"name": name, "namespace": namespace, "uid": "u"}, "spec": {}}

    async def scenario() -> None:
        controller = Controller(
            settings=SETTINGS, client=Jobs(), pods_index={}, decide=decide_spy, elector=elector("a", Clock(), [])
        )  # type: ignore[arg-type]
        assert not controller.leading
        await controller.trigger(("ns", "demo"))
        await controller.resync()
        assert calls == [] and ("ns", "demo") in controller.slots
        controller.set_leading(True)
        for _ in range(100):
            if calls:
                break
            await asyncio.sleep(0.01)
        for slot in controller.slots.values():
            if slot.requeue:
                slot.requeue.cancel()

    asyncio.run(scenario())
    assert calls == ["demo"]
