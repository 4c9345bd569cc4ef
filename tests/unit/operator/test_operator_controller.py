"""The Controller runtime against an in-memory cluster: coalescing, requeues, namesakes, apply order, errors."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from llmtrain_operator import controller as controller_module
from llmtrain_operator import reconcile as reconcile_module
from llmtrain_operator.controller import Controller, KubeApi, event_manifest
from llmtrain_operator.gpu_nodes import gpu_node
from llmtrain_operator.kubeapi import ApiError
from llmtrain_operator.observe import PodView
from llmtrain_operator.reconcile import Decision, Event, JobView, reconcile
from prometheus_client import REGISTRY
from reconcile_inputs import NOW, SETTINGS, SPEC

KEY = ("ns", "demo")
UID = "uid-1"


def apply_merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = apply_merge_patch(merged[key], value)
        else:
            merged[key] = value
    return merged


def owned_by(uid: str) -> list[dict[str, Any]]:
    return [{"kind": "LLMTrainingJob", "name": "demo", "uid": uid, "controller": True}]


class FakeKube:
    """An API server in a dict, implementing controller.KubeApi; records every write in order."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, str, str]] = []  # (verb, kind, name)
        self.events: list[dict[str, Any]] = []
        self.fail: dict[tuple[str, str], Exception] = {}  # (verb, kind) -> raised
        self.conflicts = 0  # status writes still to answer with a conflict
        self.get_gate: asyncio.Event | None = None
        self.status_gate: asyncio.Event | None = None
        self.job_reads = 0
        self.pod_groups_served = False

    def add_job(self, status: dict[str, Any] | None = None, uid: str = UID) -> None:
        meta = {"name": "demo", "namespace": "ns", "uid": uid, "generation": 1, "resourceVersion": "1"}
        body = {"kind": "LLMTrainingJob", "metadata": meta, "spec": copy.deepcopy(SPEC), "status": status or {}}
        self.objects[("LLMTrainingJob", "ns", "demo")] = body

    def add(self, kind: str, name: str, owner_uid: str = UID, **fields: Any) -> None:
        meta = {"name": name, "namespace": "ns", "ownerReferences": owned_by(owner_uid)}
        self.objects[(kind, "ns", name)] = {"kind": kind, "metadata": meta, **fields}

    def job(self) -> dict[str, Any]:
        return self.objects[("LLMTrainingJob", "ns", "demo")]

    def _maybe_fail(self, verb: str, kind: str) -> None:
        if (verb, kind) in self.fail:
            raise self.fail[(verb, kind)]

    async def serves(self, api_version: str, resource: str) -> bool:
        return self.pod_groups_served and (api_version, resource) == ("scheduling.k8s.io/v1beta1", "podgroups")

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        if kind == "LLMTrainingJob":
            self.job_reads += 1
            if self.get_gate is not None:
                await self.get_gate.wait()
        self._maybe_fail("get", kind)
        found = self.objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    async def create(self, manifest: dict[str, Any]) -> bool:
        kind, meta = manifest["kind"], manifest["metadata"]
        self._maybe_fail("create", kind)
        if kind == "Event":
            self.events.append(manifest)
            return True
        self.writes.append(("create", kind, meta["name"]))
        if (kind, meta["namespace"], meta["name"]) in self.objects:
            return False  # 409 AlreadyExists, as kubeapi.KubeClient reports it
        self.objects[(kind, meta["namespace"], meta["name"])] = copy.deepcopy(manifest)
        return True

    async def merge_patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self._maybe_fail("patch", kind)
        self.writes.append(("patch", kind, name))
        merged = apply_merge_patch(self.objects[(kind, namespace, name)], patch)
        self.objects[(kind, namespace, name)] = merged
        return merged

    async def delete(self, kind: str, namespace: str, name: str, grace_seconds: int | None = None) -> bool:
        self._maybe_fail("delete", kind)
        self.writes.append(("delete" if grace_seconds is None else f"delete grace={grace_seconds}", kind, name))
        return self.objects.pop((kind, namespace, name), None) is not None  # False: 404, already gone

    async def patch_job_status(
        self, namespace: str, name: str, patch: dict[str, Any], resource_version: str | None
    ) -> dict[str, Any] | None:
        if self.status_gate is not None:
            await self.status_gate.wait()
        self.writes.append(("status", "LLMTrainingJob", name))
        body = self.objects.get(("LLMTrainingJob", namespace, name))
        if body is None or self.conflicts or resource_version != body["metadata"]["resourceVersion"]:
            self.conflicts = max(self.conflicts - 1, 0)
            return None
        body["status"] = apply_merge_patch(body.get("status") or {}, patch)
        body["metadata"]["resourceVersion"] = str(int(body["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(body)

    async def close(self) -> None:
        pass


def make_controller(kube: FakeKube, pods: list[PodView] | None = None, **fields: Any) -> Controller:
    """A controller on the fake API; every status change is written at once unless a test sets the interval."""
    kube_api: KubeApi = kube  # the fake implements the controller's whole client interface
    fields = {"status_interval_seconds": 0.0, **fields}
    return Controller(settings=SETTINGS, client=kube_api, pods_index={KEY: pods or []}, clock=lambda: NOW, **fields)


def errors(stage: str) -> float:
    return REGISTRY.get_sample_value("llmtrain_operator_reconcile_errors_total", {"stage": stage}) or 0.0


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=60))  # a guard against hangs, generous on a loaded machine


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.005)


def unchanged(job_view: JobView) -> Decision:
    """A decision that changes nothing."""
    return Decision(status=job_view.status, old_status=job_view.status)


def recording(calls: list[tuple[Any, ...]], first_requeue: float | None = None):
    """A decide function that records its arguments and changes nothing (but may requeue the first time)."""

    def decide(*args: Any) -> Decision:
        calls.append(args)
        decision = unchanged(args[0])
        if first_requeue is not None and len(calls) == 1:
            decision.requeue(first_requeue)
        return decision

    return decide


def counting(decisions: list[Decision]):
    """A decide function that records reconcile's decisions."""

    def decide(*args: Any) -> Decision:
        decisions.append(reconcile(*args))
        return decisions[-1]

    return decide


# ----- a reconcile, applied ---------------------------------------------------------------------------------------


def test_a_new_job_gets_its_status_then_its_children_then_its_events():
    kube = FakeKube()
    kube.add_job()

    async def scenario() -> None:
        controller = make_controller(kube)
        await controller.trigger(KEY)
        assert kube.writes == [
            ("status", "LLMTrainingJob", "demo"),
            ("create", "ConfigMap", "demo-config"),
            ("create", "Service", "demo"),
            ("create", "Pod", "demo-node-0"),
            ("create", "Pod", "demo-node-1"),
        ]
        assert kube.job()["status"]["phase"] == "Pending" and kube.job()["status"]["active"] == 0  # none existed yet
        await controller.trigger(KEY)  # the pods' watch events

    run(scenario)
    assert kube.job()["status"]["active"] == 2  # counted once they exist
    assert [event["reason"] for event in kube.events] == ["Created"]


def test_routine_status_changes_wait_for_the_write_budget_and_transitions_do_not():
    kube = FakeKube()
    kube.add_job()
    pending = [PodView(name=f"demo-node-{r}", rank=r, attempt=0, phase="Pending", owner_uid=UID) for r in (0, 1)]
    waiting = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    one_waits = [replace(pending[0], unschedulable=waiting), pending[1]]
    both_wait = [replace(pod, unschedulable=waiting) for pod in pending]

    async def scenario() -> None:
        controller = make_controller(kube, status_interval_seconds=60.0)
        await controller.trigger(KEY)  # Pending: a transition, written with the children
        controller.pods_index = {KEY: one_waits}
        await controller.trigger(KEY)  # Queued: a transition (and the pods counted)
        queued = next(c for c in kube.job()["status"]["conditions"] if c["type"] == "Queued")
        controller.pods_index = {KEY: both_wait}
        await controller.trigger(KEY)  # only Queued's wording changes ("2 of 2 waiting"): it waits
        assert next(c for c in kube.job()["status"]["conditions"] if c["type"] == "Queued") == queued
        # two transitions in a row spent this interval's write and borrowed the next one: two intervals
        assert 119 < controller.slots[KEY].requeue_at - asyncio.get_running_loop().time() <= 120
        controller.pods_index = {KEY: [replace(pod, phase="Running", ready=True) for pod in pending]}
        await controller.trigger(KEY)  # Running: a transition, written at once

    run(scenario)
    status = kube.job()["status"]
    assert status["phase"] == "Running" and status["active"] == status["ready"] == 2
    assert [w for w in kube.writes if w[0] == "status"] == [("status", "LLMTrainingJob", "demo")] * 3


def test_a_status_write_that_loses_a_race_drops_the_decision_and_decides_again():
    kube = FakeKube()
    kube.add_job()
    kube.conflicts = 1

    async def scenario() -> None:
        await make_controller(kube).trigger(KEY)

    run(scenario)
    assert kube.writes[:2] == [("status", "LLMTrainingJob", "demo"), ("status", "LLMTrainingJob", "demo")]
    assert ("create", "Pod", "demo-node-1") in kube.writes and kube.job_reads == 2


def test_a_pod_created_but_not_yet_indexed_is_not_created_again():
    kube = FakeKube()
    kube.add_job()

    async def scenario() -> None:
        controller = make_controller(kube)
        await controller.trigger(KEY)
        await controller.trigger(KEY)  # the index still shows no pods

    run(scenario)
    assert [write for write in kube.writes if write[1] == "Pod"] == [
        ("create", "Pod", "demo-node-0"),
        ("create", "Pod", "demo-node-1"),
    ]


def test_a_deleted_job_is_forgotten():
    kube = FakeKube()

    async def scenario() -> None:
        controller = make_controller(kube)
        await controller.trigger(KEY)
        assert KEY not in controller.slots

    run(scenario)


# ----- coalescing and requeues ------------------------------------------------------------------------------------


def test_a_burst_of_triggers_during_a_reconcile_is_coalesced_into_one_follow_up():
    kube = FakeKube()
    kube.add_job()
    kube.get_gate = asyncio.Event()
    decisions: list[Decision] = []

    async def scenario() -> None:
        controller = make_controller(kube, decide=counting(decisions))
        first = asyncio.ensure_future(controller.trigger(KEY))
        await until(lambda: kube.job_reads == 1)
        await asyncio.gather(*(controller.trigger(KEY) for _ in range(50)))  # each returns at once
        kube.get_gate.set()
        await first

    run(scenario)
    assert len(decisions) == 2 and kube.job_reads == 1  # the follow-up starts from the body our write returned


def lag_samples() -> tuple[float, float]:
    """(count, sum) of the reconcile lag histogram so far (the registry is process-wide: tests read deltas)."""
    count = REGISTRY.get_sample_value("llmtrain_operator_reconcile_lag_seconds_count") or 0.0
    return count, REGISTRY.get_sample_value("llmtrain_operator_reconcile_lag_seconds_sum") or 0.0


def test_reconcile_lag_is_the_wait_of_the_first_coalesced_trigger_behind_the_running_reconcile():
    kube = FakeKube()
    kube.add_job()
    kube.get_gate = asyncio.Event()
    before = lag_samples()

    async def scenario() -> None:
        controller = make_controller(kube, decide=unchanged_decide)
        first = asyncio.ensure_future(controller.trigger(KEY))
        await until(lambda: kube.job_reads == 1)
        await controller.trigger(KEY)  # waits behind the running reconcile...
        await asyncio.sleep(0.2)
        await controller.trigger(KEY)  # ...and this one coalesces into it: one follow-up, one lag sample
        kube.get_gate.set()
        await first

    run(scenario)
    count, total = (after - base for after, base in zip(lag_samples(), before, strict=True))
    assert count == 2  # the first reconcile (started at once) and the follow-up
    assert 0.2 <= total < 5  # the follow-up waited from the first trigger behind the gate, not from the last


def test_a_standby_counts_no_lag_for_the_time_it_stood_by():
    kube = FakeKube()
    kube.add_job()
    before = lag_samples()

    async def scenario() -> None:
        controller = make_controller(kube, decide=unchanged_decide)
        controller.leading = False
        await controller.trigger(KEY)
        await asyncio.sleep(0.2)
        controller.set_leading(True)
        await until(lambda: kube.job_reads == 1)

    run(scenario)
    count, total = (after - base for after, base in zip(lag_samples(), before, strict=True))
    assert count == 1 and total < 0.2


def unchanged_decide(job_view: JobView, *_: Any) -> Decision:
    return unchanged(job_view)


def test_a_requeue_reconciles_the_job_again_when_due():
    kube = FakeKube()
    kube.add_job(status={"phase": "Pending"})
    calls: list[tuple[Any, ...]] = []

    async def scenario() -> None:
        await make_controller(kube, decide=recording(calls, first_requeue=0.01)).trigger(KEY)
        assert len(calls) == 1
        await until(lambda: len(calls) == 2)

    run(scenario)


def test_an_earlier_requeue_is_not_postponed_by_a_later_one():
    kube = FakeKube()
    kube.add_job(status={"phase": "Pending"})
    calls: list[tuple[Any, ...]] = []

    async def scenario() -> None:
        controller = make_controller(kube, decide=recording(calls))
        slot = controller.slots.setdefault(KEY, controller_module.JobSlot())
        controller.schedule(KEY, slot, 0.01)
        controller.schedule(KEY, slot, 60)
        await until(lambda: len(calls) == 1)

    run(scenario)


# ----- a deleted job's namesake children --------------------------------------------------------------------------


def test_a_namesakes_pods_are_neither_adopted_nor_clashed_with():
    kube = FakeKube()
    kube.add_job(status={"phase": "Pending", "restarts": 0})
    kube.add("ConfigMap", "demo-config", data={})
    kube.add("Service", "demo")
    leftover = PodView(name="demo-node-0", rank=0, attempt=0, phase="Running", owner_uid="old-uid")

    async def scenario() -> None:
        controller = make_controller(kube, pods=[leftover])
        await controller.trigger(KEY)
        assert controller.slots[KEY].requeue is not None  # back when the name is free

    run(scenario)
    assert [write for write in kube.writes if write[1] == "Pod"] == [("create", "Pod", "demo-node-1")]


def test_a_namesakes_config_map_holds_the_new_jobs_pods_back():
    kube = FakeKube()
    kube.add_job(status={"phase": "Pending", "restarts": 0})
    kube.add("ConfigMap", "demo-config", owner_uid="old-uid", data={})
    kube.add("Service", "demo")

    async def scenario() -> None:
        controller = make_controller(kube)
        await controller.trigger(KEY)
        assert controller.slots[KEY].requeue is not None

    run(scenario)
    assert [write for write in kube.writes if write[0] == "create"] == []


# ----- idempotent writes ------------------------------------------------------------------------------------------


def test_creating_what_already_exists_counts_as_created():
    kube = FakeKube()
    kube.add_job()
    kube.add("Pod", "demo-node-0", spec={"marker": "kept"})

    async def scenario() -> None:
        await make_controller(kube).trigger(KEY)

    before = errors("apply")
    run(scenario)
    assert ("create", "Pod", "demo-node-1") in kube.writes and errors("apply") == before
    assert kube.objects[("Pod", "ns", "demo-node-0")]["spec"] == {"marker": "kept"}


def test_deleting_what_is_already_gone_is_not_an_error():
    kube = FakeKube()
    kube.add_job(status={"phase": "Running", "restarts": 0})
    gone = [PodView(name=f"demo-node-{rank}", rank=rank, attempt=0, phase="Running") for rank in (0, 1)]

    def suspend(*args: Any) -> Decision:
        decision = unchanged(args[0])
        decision.deletes = [("Pod", "demo-node-0"), ("Pod", "demo-node-1")]
        return decision

    async def scenario() -> None:
        await make_controller(kube, pods=gone, decide=suspend).trigger(KEY)

    before = errors("apply")
    run(scenario)
    assert kube.writes == [("delete", "Pod", "demo-node-0"), ("delete", "Pod", "demo-node-1")]
    assert errors("apply") == before


def test_a_not_found_from_a_terminating_namespace_is_not_an_error():
    kube = FakeKube()
    kube.add_job()
    kube.fail[("create", "Pod")] = ApiError(404, {"message": "namespace ns is being terminated"}, "create")

    async def scenario() -> None:
        await make_controller(kube).trigger(KEY)

    before = errors("apply")
    run(scenario)
    assert errors("apply") == before


QUOTA = 'pods "demo-node-0" is forbidden: exceeded quota: no-pods, requested: pods=1, used: pods=0, limited: pods=0'


def test_a_create_the_api_rejects_is_reported_in_the_same_trigger_and_retried_once_the_cause_is_lifted():
    kube = FakeKube()
    kube.add_job()
    kube.fail[("create", "Pod")] = ApiError(403, {"message": QUOTA}, "create Pod ns/demo-node-0")

    async def scenario() -> None:
        controller = make_controller(kube)
        await controller.trigger(KEY)  # creates rejected, then one more reconcile at once to report it
        created = next(c for c in kube.job()["status"]["conditions"] if c["type"] == "Created")
        assert created["status"] == "False" and created["reason"] == "CreateFailed" and QUOTA in created["message"]
        assert [(e["type"], e["reason"]) for e in kube.events] == [("Warning", "CreateFailed")]
        assert QUOTA in kube.events[0]["message"] and "2 creates rejected" in kube.events[0]["message"]
        assert kube.job()["status"]["active"] == 0  # nothing exists, nothing counted
        assert controller.slots[KEY].requeue is not None  # the retry

        del kube.fail[("create", "Pod")]  # the quota is deleted
        controller.clock = lambda: NOW + timedelta(seconds=reconcile_module.CREATE_RETRY_SECONDS)
        await controller.trigger(KEY)  # the retry creates the pods
        assert [w for w in kube.writes if w[:2] == ("create", "Pod")] == [
            ("create", "Pod", "demo-node-0"),
            ("create", "Pod", "demo-node-1"),
        ]
        await controller.trigger(KEY)  # their watch events: they exist now
        created = next(c for c in kube.job()["status"]["conditions"] if c["type"] == "Created")
        assert created["status"] == "True" and created["reason"] == "ChildrenCreated"
        assert kube.job()["status"]["active"] == 2

    before = errors("apply")
    run(scenario)
    assert errors("apply") == before  # a rejection is the job's condition, not an operator error


def test_a_config_update_the_api_rejects_is_reported_and_no_pod_starts_on_the_stale_config():
    kube = FakeKube()
    kube.add_job(status={"phase": "Pending", "restarts": 0})
    kube.add("ConfigMap", "demo-config", data={"config.json": "{}"})  # rendered from an older spec
    kube.add("Service", "demo")
    kube.fail[("patch", "ConfigMap")] = ApiError(403, {"message": "denied by policy"}, "patch ConfigMap ns/demo-config")

    async def scenario() -> None:
        await make_controller(kube).trigger(KEY)

    run(scenario)
    assert not [w for w in kube.writes if w[1] == "Pod"]
    created = next(c for c in kube.job()["status"]["conditions"] if c["type"] == "Created")
    assert created["reason"] == "CreateFailed" and "denied by policy" in created["message"]


# ----- errors are logged, counted and retried ---------------------------------------------------------------------


def test_a_failed_write_is_logged_counted_and_retried(monkeypatch, caplog):
    monkeypatch.setattr(controller_module, "ERROR_RETRY_SECONDS", 0.01)
    kube = FakeKube()
    kube.add_job()
    kube.fail[("create", "Pod")] = ApiError(500, {"message": "etcd is sad"}, "create")

    async def scenario() -> None:
        await make_controller(kube).trigger(KEY)
        await until(lambda: kube.job_reads >= 2)  # the retry

    before = errors("apply")
    with caplog.at_level(logging.ERROR, logger="llmtrain_operator"):
        run(scenario)
    assert errors("apply") >= before + 1
    failure = next(record for record in caplog.records if "reconcile of job ns/demo failed (apply)" in record.message)
    assert failure.exc_info is not None and "etcd is sad" in str(failure.exc_info[1])


def test_an_exception_inside_reconcile_is_logged_and_counted_not_swallowed(caplog):
    kube = FakeKube()
    kube.add_job()

    def broken(*_: Any) -> Decision:
        raise ValueError("a bug in a policy")

    async def scenario() -> None:
        controller = make_controller(kube, decide=broken)
        await controller.trigger(KEY)
        assert controller.slots[KEY].requeue is not None  # retried later

    before = errors("decide")
    with caplog.at_level(logging.ERROR, logger="llmtrain_operator"):
        run(scenario)
    assert errors("decide") == before + 1
    [record] = [record for record in caplog.records if record.exc_info]
    assert isinstance(record.exc_info[1], ValueError) and kube.writes == []


def test_a_failed_read_is_counted_as_observe():
    kube = FakeKube()
    kube.add_job()
    kube.fail[("get", "LLMTrainingJob")] = ApiError(503, "unavailable", "get")

    async def scenario() -> None:
        await make_controller(kube).trigger(KEY)

    before = errors("observe")
    run(scenario)
    assert errors("observe") == before + 1


def test_resync_logs_and_counts_a_failed_progress_read_and_still_triggers_the_job(monkeypatch, caplog):
    kube = FakeKube()
    kube.add_job()

    async def failing_sample(self: Controller, key: tuple[str, str]) -> None:
        raise OSError("metrics endpoint exploded")

    monkeypatch.setattr(Controller, "_sample_progress", failing_sample)

    async def scenario() -> None:
        controller = make_controller(kube)
        controller.slots[KEY] = controller_module.JobSlot()
        await controller.resync()
        await until(lambda: kube.job_reads == 1)

    before = errors("progress")
    with caplog.at_level(logging.ERROR, logger="llmtrain_operator"):
        run(scenario)
    assert errors("progress") == before + 1
    assert any(record.exc_info and "progress of job ns/demo" in record.message for record in caplog.records)


def test_resync_hands_the_latest_progress_sample_to_the_next_reconcile(monkeypatch):
    from llmtrain_operator.api import Progress

    kube = FakeKube()
    kube.add_job(status={"phase": "Running", "restarts": 0})
    rank0 = PodView(name="demo-node-0", rank=0, attempt=0, phase="Running", ip="10.0.0.1", owner_uid=UID)
    monkeypatch.setattr(controller_module, "fetch_progress", lambda ip, port, timeout: Progress(step=7))
    calls: list[tuple[Any, ...]] = []

    async def scenario() -> None:
        controller = make_controller(kube, pods=[rank0], decide=recording(calls))
        controller.slots[KEY] = controller_module.JobSlot(phase="Running", uid=UID)
        await controller.resync()
        await until(lambda: len(calls) == 1)

    run(scenario)
    [(*_, progress)] = calls
    assert progress == Progress(step=7)


def test_a_background_task_that_dies_is_logged_and_counted(caplog):
    async def scenario() -> None:
        async def crash() -> None:
            raise RuntimeError("lost")

        task = asyncio.ensure_future(crash())
        task.add_done_callback(controller_module._report_crash)
        with pytest.raises(RuntimeError):
            await task
        await asyncio.sleep(0)  # done callbacks run on the next loop turn

    before = errors("background")
    with caplog.at_level(logging.ERROR, logger="llmtrain_operator"):
        run(scenario)
    assert errors("background") == before + 1
    assert any(record.exc_info and "background task" in record.message for record in caplog.records)


# ----- nodes: the GPU memory the memory preflight checks against ---------------------------------------------------

H200_MIB, H100_MIB = 143_771, 81_559


def node_body(name: str, memory_mib: int | None, gpus: int = 8, **labels: str) -> dict[str, Any]:
    if memory_mib is not None:
        labels["nvidia.com/gpu.memory"] = str(memory_mib)
    allocatable = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    return {"kind": "Node", "metadata": {"name": name, "labels": labels}, "status": {"allocatable": allocatable}}


def nodes_index(*bodies: dict[str, Any]) -> dict[str, list[Any]]:
    """What handlers.py's gpu_nodes index holds: node name -> [GpuNode], nodes without GPUs left out."""
    views = [gpu_node(body) for body in bodies]
    return {view.name: [view] for view in views if view is not None}


def test_the_observed_gpu_memory_is_the_smallest_among_gpu_nodes_matching_the_node_selector():
    kube = FakeKube()
    kube.add_job()
    kube.job()["spec"]["scheduling"] = {"nodeSelector": {"pool": "train"}}
    calls: list[tuple[Any, ...]] = []
    index = nodes_index(
        node_body("h200", H200_MIB, pool="train"),
        node_body("h100", H100_MIB, pool="inference"),  # not where the pods may land
        node_body("cpu", 1024, gpus=0, pool="train"),  # no GPUs: its label means nothing
        node_body("new", None, pool="train"),  # not (yet) labelled by GPU feature discovery
    )

    async def scenario() -> None:
        await make_controller(kube, decide=recording(calls), nodes_index=index).trigger(KEY)
        kube.job()["spec"]["scheduling"] = {}
        await make_controller(kube, decide=recording(calls), nodes_index=index).trigger(KEY)
        kube.job()["spec"]["scheduling"] = {"nodeSelector": {"pool": "none-such"}}
        await make_controller(kube, decide=recording(calls), nodes_index=index).trigger(KEY)
        await make_controller(kube, decide=recording(calls)).trigger(KEY)  # no index yet

    run(scenario)
    observed = [call[1].gpu_memory_bytes for call in calls]
    assert observed == [H200_MIB * 2**20, H100_MIB * 2**20, None, None]


def test_a_job_that_cannot_fit_the_nodes_gpus_is_failed_before_any_child_is_created():
    kube = FakeKube()
    kube.add_job()
    kube.job()["spec"].update(
        procsPerNode="auto",
        resources={"limits": {"nvidia.com/gpu": 1}},
        model={"preset": "llama-8b"},
        data={"seqLen": 4096},
        training={"steps": 10, "globalBatchSize": 16, "microBatchSize": 8},
    )
    index = nodes_index(node_body("h200-0", H200_MIB), node_body("h200-1", H200_MIB))

    async def scenario() -> None:
        await make_controller(kube, nodes_index=index).trigger(KEY)

    run(scenario)
    assert kube.writes == [("status", "LLMTrainingJob", "demo")]  # no ConfigMap, Service or pod
    status = kube.job()["status"]
    assert status["phase"] == "Failed" and status["memoryEstimate"]["gpuMemoryBytes"] == H200_MIB * 2**20
    (event,) = kube.events
    assert event["reason"] == "WillNotFit" and "try training.microBatchSize" in event["message"]


def test_event_manifest_is_about_the_job():
    body = {"metadata": {"name": "demo", "namespace": "ns", "uid": UID}}
    manifest = event_manifest(body, Event("Warning", "Unschedulable", "x" * 2000), NOW)
    assert manifest["involvedObject"]["uid"] == UID and manifest["involvedObject"]["kind"] == "LLMTrainingJob"
    assert manifest["type"] == "Warning" and len(manifest["message"]) == 1024
    assert manifest["firstTimestamp"] == manifest["lastTimestamp"] == "2026-01-01T12:00:00Z"


def test_handlers_only_register_kopf_handlers_around_a_controller():
    import kopf
    from llmtrain_operator.handlers import register

    registry = kopf.OperatorRegistry()
    register(registry, Controller(settings=SETTINGS))
    ids = {handler.id for handler in registry._activities.get_all_handlers()}
    assert {"configure", "shutdown", "login"} <= ids


def test_a_job_event_hands_its_body_over_and_returns_without_waiting_for_the_reconcile():
    import kopf
    from llmtrain_operator.handlers import register

    kube = FakeKube()
    kube.add_job()
    kube.get_gate, kube.status_gate = asyncio.Event(), asyncio.Event()  # a GET would wait forever; so does the write

    async def scenario() -> None:
        registry = kopf.OperatorRegistry()
        controller = make_controller(kube)
        register(registry, controller)
        (handler,) = [h for h in registry._watching.get_all_handlers() if h.id == "job_event"]
        indices = {"node_pods": {}, "gpu_nodes": {}, "unreachable_nodes": {}}
        event = {"type": "ADDED", "body": kopf.Body(kube.job()), "namespace": "ns", "name": "demo"}
        await asyncio.wait_for(handler.fn(**event, **indices), 1)  # returned while the reconcile waits to write
        assert controller.slots[KEY].running and kube.writes == []
        kube.status_gate.set()
        await until(lambda: ("status", "LLMTrainingJob", "demo") in kube.writes)

    run(scenario)
    assert kube.job_reads == 0  # the reconcile started from the event's body


def test_gpu_nodes_are_indexed_by_name_and_a_node_without_gpus_drops_out():
    import kopf
    from llmtrain_operator.handlers import register

    registry = kopf.OperatorRegistry()
    register(registry, Controller(settings=SETTINGS))
    (index,) = [handler for handler in registry._indexing.get_all_handlers() if handler.id == "gpu_nodes"]
    assert index.selector is not None and index.selector.any_name == "nodes"
    h200 = asyncio.run(index.fn(body=kopf.Body(node_body("gpu-0", H200_MIB))))
    assert h200["gpu-0"].memory_mib == H200_MIB and h200["gpu-0"].gpus == 8
    no_gpus = asyncio.run(index.fn(body=kopf.Body(node_body("gpu-0", H200_MIB, gpus=0))))
    assert no_gpus == {}  # {}, not None: kopf drops it


def test_the_pod_watch_is_filtered_by_the_api_server_and_the_job_watch_is_not():
    import kopf
    from llmtrain_operator.handlers import configure_watching

    settings = kopf.OperatorSettings()
    configure_watching(settings)
    pods = kopf.Resource(group="", version="v1", plural="pods")
    jobs = kopf.Resource(group="llmtrain.dev", version="v1alpha1", plural="llmtrainingjobs")
    assert settings.watching.label_selectors.collect(pods) == ["llmtrain.dev/job-name"]
    assert settings.watching.label_selectors.collect(jobs) == []


def test_every_error_stage_is_exported_from_the_start():
    from llmtrain_operator.metrics import ERROR_STAGES

    assert all(
        REGISTRY.get_sample_value("llmtrain_operator_reconcile_errors_total", {"stage": stage}) is not None
        for stage in ERROR_STAGES
    )


# ----- resync: progress reads --------------------------------------------------------------------------------------


def test_resync_reports_unreachable_metrics_to_the_next_reconcile_and_backs_off_that_job(monkeypatch):
    from llmtrain_operator.progress import MetricsUnreachable

    kube = FakeKube()
    kube.add_job(status={"phase": "Running", "restarts": 0})
    pods = [
        PodView(name=f"demo-node-{r}", rank=r, attempt=0, phase="Running", ip=f"10.0.0.{r}", owner_uid=UID)
        for r in (0, 1)
    ]
    reads: list[str] = []

    def unreachable(ip: str, port: int, timeout: float) -> None:
        reads.append(ip)
        raise MetricsUnreachable(f"http://{ip}:{port}/metrics: timed out")

    monkeypatch.setattr(controller_module, "fetch_progress", unreachable)
    calls: list[tuple[Any, ...]] = []

    async def scenario() -> None:
        controller = make_controller(kube, pods=pods, decide=recording(calls))
        controller.slots[KEY] = controller_module.JobSlot(phase="Running", uid=UID)
        await controller.resync()
        await until(lambda: len(calls) == 1)
        assert sorted(reads) == ["10.0.0.0", "10.0.0.1"]  # node 0 first, then the others
        await controller.resync()  # within the back-off: not read again, still reported
        await until(lambda: len(calls) == 2)
        assert len(reads) == 2

    run(scenario)
    observed = calls[0][1]
    assert "no node pod's metrics port answered (2 tried)" in observed.metrics_unreachable.message
    assert observed.metrics_unreachable.since == NOW
    assert calls[1][1].metrics_unreachable == observed.metrics_unreachable


def test_resync_leaves_finished_jobs_alone(monkeypatch):
    kube = FakeKube()
    kube.add_job(status={"phase": "Succeeded"})
    calls: list[tuple[Any, ...]] = []

    async def scenario() -> None:
        controller = make_controller(kube, decide=recording(calls))
        controller.slots[KEY] = controller_module.JobSlot(phase="Succeeded", uid=UID)
        await controller.resync()
        await asyncio.sleep(0.05)

    run(scenario)
    assert calls == [] and kube.job_reads == 0


# ----- resync: which jobs --------------------------------------------------------------------------------------------


def test_resync_reconciles_running_and_new_jobs_every_round_and_each_other_unfinished_job_once_per_safety_rounds():
    slots = {("ns", f"job-{i}"): controller_module.JobSlot(phase="Pending") for i in range(50)}
    slots[("ns", "running")] = controller_module.JobSlot(phase="Running")
    slots[("ns", "new")] = controller_module.JobSlot(phase=None)
    slots[("ns", "done")] = controller_module.JobSlot(phase="Succeeded")
    rounds = controller_module.SAFETY_ROUNDS
    due = [controller_module.resync_due(slots, round_number) for round_number in range(rounds)]
    assert all(("ns", "running") in keys and ("ns", "new") in keys for keys in due)
    assert not any(("ns", "done") in keys for keys in due)
    pending = [[key for key in keys if key[1].startswith("job-")] for keys in due]
    assert sorted(key for keys in pending for key in keys) == sorted(k for k in slots if k[1].startswith("job-"))
    assert max(len(keys) for keys in pending) < 50  # never all of them in one resync


def test_a_job_is_reconciled_from_its_watched_body_without_a_get():
    kube = FakeKube()
    kube.add_job()
    calls: list[tuple[Any, ...]] = []

    async def scenario() -> None:
        controller = make_controller(kube, decide=recording(calls))
        controller.watched(KEY, kube.job())
        await controller.trigger(KEY)

    run(scenario)
    assert len(calls) == 1 and kube.job_reads == 0


def test_after_its_own_status_write_the_controller_reconciles_from_the_written_body_not_an_older_watched_one():
    kube = FakeKube()
    kube.add_job()
    older = copy.deepcopy(kube.job())
    seen: list[JobView] = []

    def decide(job: JobView, *args: Any) -> Decision:
        seen.append(job)
        return reconcile(job, *args)

    async def scenario() -> None:
        controller = make_controller(kube, decide=decide)
        controller.watched(KEY, older)
        await controller.trigger(KEY)  # writes status (resourceVersion 1 -> 2)
        controller.watched(KEY, older)  # the watch still catching up: version 1
        await controller.trigger(KEY)

    run(scenario)
    assert kube.job_reads == 0
    assert seen[0].status == {} and seen[1].status["phase"] == "Pending"


def test_a_stale_cached_body_costs_one_conflict_then_a_fresh_read():
    kube = FakeKube()
    kube.add_job()
    stale = copy.deepcopy(kube.job())
    kube.job()["metadata"]["resourceVersion"] = "7"  # someone wrote since; the watch has not shown it yet
    calls: list[tuple[Any, ...]] = []
    real = reconcile

    def decide(*args: Any) -> Decision:
        calls.append(args)
        return real(*args)

    async def scenario() -> None:
        controller = make_controller(kube, decide=decide)
        controller.watched(KEY, stale)
        await controller.trigger(KEY)

    run(scenario)
    assert kube.job_reads == 1 and len(calls) == 2  # decided on the stale body, conflicted, read, decided again
    assert kube.job()["status"]["phase"] == "Pending"
