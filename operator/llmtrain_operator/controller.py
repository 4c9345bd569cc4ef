"""The operator's runtime: triggers in, `reconcile()` decisions applied out, over a narrow Kubernetes client.

* A trigger (a job event, a pod event, a requeue, the resync) asks for a reconcile of one job; triggers that arrive
  while one runs are coalesced into a single follow-up run (a 64-pod gang emits hundreds of pod events). At most
  RECONCILE_CONCURRENCY jobs reconcile at once (controller-runtime's MaxConcurrentReconciles): beyond the API
  server's pace more would only wait on the client while holding their manifests.
* The job itself comes from a cache of its newest body (from the watch, our status writes and GETs: job_cache.py),
  not a GET per reconcile. A stale body costs a conflict on the conditional status write, then a GET.
* Node pods come from an index (kopf's, keyed by (namespace, job name)) of PodViews, so a reconcile lists nothing.
  GPU nodes come from another (node name -> GpuNode): the memory one GPU of the job's pods would get, for the
  admission-time memory preflight.
* Children of a deleted job with the same name (a namesake) are told apart by their controlling owner's uid: they
  are never adopted, but their names stay taken until the garbage collector removes them.
* Apply order: status first (conditional on resourceVersion), then deletes, config updates, creates, events. A
  conflict means another write raced us: drop the decision and reconcile again from fresh state. Creates and
  deletes are idempotent: AlreadyExists and NotFound are outcomes, not errors.
* A create the API server rejects (4xx other than AlreadyExists: a quota, an admission webhook, RBAC) is recorded
  and handed to the next reconcile, which runs at once and reports it (Created=False/CreateFailed, Warning event).
* With leader election (several replicas), only the leader reconciles; a standby keeps its pod index warm and
  notes which jobs exist, and reconciles all of them the moment it leads (leader.py).
* A failure anywhere else is logged with its traceback and counted in llmtrain_operator_reconcile_errors_total{stage},
  then retried; nothing is swallowed.

No kopf here: handlers.py registers the kopf handlers that drive a Controller.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from llmtrain_contract.metrics import DEFAULT_METRICS_PORT

from . import metrics
from .api import TERMINAL_PHASES, Progress
from .constants import GROUP, KIND, VERSION, config_map_name, service_name
from .expectations import Expectations
from .gang import POD_GROUP_API_VERSION
from .gpu_nodes import GpuNode, gpu_memory_bytes
from .job_cache import CachedJob
from .kubeapi import ApiError, gather_limited
from .leader import LeaderElector
from .observe import PodView, controller_uid, pod_view
from .progress import MetricsUnreachable, fetch_progress, scrape_backoff
from .reconcile import (
    CreateFailure,
    Decision,
    Event,
    JobView,
    Observed,
    OperatorSettings,
    reconcile,
    run_policy_of,
)
from .reconcile import (
    MetricsUnreachable as Unreadable,
)
from .status_writes import WriteBudget, routine_only, status_interval
from .timestamps import rfc3339

log = logging.getLogger("llmtrain_operator")
Key = tuple[str, str]  # (namespace, job name)
PodIndex = Mapping[Key, Iterable[PodView]]  # kopf.Index[Key, PodView] in the operator, a dict in tests
NodeIndex = Mapping[str, Iterable[GpuNode]]  # kopf.Index[str, GpuNode] (node name) in the operator, a dict in tests
Decide = Callable[[JobView, Observed, datetime, OperatorSettings, Progress | None], Decision]

ERROR_RETRY_SECONDS = 5.0  # after a failed reconcile
CONFLICT_PAUSE_SECONDS = 0.05  # before re-reading a job whose status write lost a race
WRITE_CONCURRENCY = 64  # creates or deletes in flight per job
SCRAPE_TIMEOUT_SECONDS = 2.0  # per metrics read: a dead endpoint must not hold the resync up
SCRAPE_CONCURRENCY = 32  # metrics reads in flight across all jobs
RECONCILE_CONCURRENCY = 64  # reconciles at once (jobs); more only wait on the API client, holding their manifests
SAFETY_ROUNDS = 10  # a job that is not Running is re-examined by every SAFETY_ROUNDS-th resync (resync_due)


class KubeApi(Protocol):
    """The few Kubernetes calls the controller makes (kubeapi.KubeClient in the operator)."""

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None if there is none."""

    async def create(self, manifest: dict[str, Any]) -> bool:
        """True if created, False if it already existed (409)."""

    async def merge_patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """JSON merge patch of an object."""

    async def delete(self, kind: str, namespace: str, name: str, grace_seconds: int | None = None) -> bool:
        """True if deleted, False if it was already gone (404); grace_seconds=0 does not wait for the kubelet."""

    async def patch_job_status(
        self, namespace: str, name: str, patch: dict[str, Any], resource_version: str | None
    ) -> dict[str, Any] | None:
        """Merge-patch a job's status if its resourceVersion is still this one; None on a conflict or 404."""

    async def serves(self, api_version: str, resource: str) -> bool:
        """Whether the API server serves `resource` in `api_version` (discovery)."""

    async def close(self) -> None:
        """Release connections."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class JobSlot:
    """What the controller keeps per job between reconciles: coalescing state and caches of what it wrote."""

    running: bool = False
    dirty: bool = False
    requeue: asyncio.TimerHandle | None = None
    requeue_at: float = 0.0
    uid: str = ""
    known_children: set[str] = field(default_factory=set)  # "ConfigMap"/"Service" seen to exist, owned by us
    expectations: Expectations = field(default_factory=Expectations)
    progress: Progress | None = None  # the latest training-progress sample, handed to the next reconcile
    phase: str | None = None
    create_failure: CreateFailure | None = None  # the latest rejected create, until creates go through again
    metrics_port: int = DEFAULT_METRICS_PORT  # spec.metrics.port as of the last reconcile
    metrics_pod: str | None = None  # the node pod whose metrics held the job's step last time (global rank 0)
    metrics_unreachable: Unreadable | None = None  # why reads of the job's metrics fail, and since when
    scrape_failures: int = 0  # unreachable reads in a row
    next_scrape_at: float = 0.0  # loop time before which the job's metrics are not read (back-off)
    status_budget: WriteBudget = field(default_factory=WriteBudget)  # status writes left (routine ones wait)
    triggered_at: float | None = None  # monotonic time of the first trigger the next reconcile serves (lag metric)
    cached: CachedJob = field(default_factory=CachedJob)  # the job's latest body, from the watch or our writes


@dataclass
class Controller:
    """Everything the handlers share; one instance per operator process."""

    settings: OperatorSettings
    resync_seconds: float = 10.0
    status_interval_seconds: float = 60.0  # routine status changes (counts, progress) are written this seldom
    client: KubeApi | None = None  # set at login
    pods_index: PodIndex | None = None  # set by the first handler call
    nodes_index: NodeIndex | None = None  # GPU nodes; set by the first handler call
    unreachable_index: Mapping[str, Any] | None = None  # names of nodes that stopped reporting; ditto
    decide: Decide = reconcile
    clock: Callable[[], datetime] = _utc_now
    slots: dict[Key, JobSlot] = field(default_factory=dict)
    resync_task: asyncio.Task[None] | None = None
    elector: LeaderElector | None = None  # None: the only replica, always acting
    leading: bool = True
    _background: set[asyncio.Future[None]] = field(default_factory=set)
    discovered: bool = False  # what the API server serves (PodGroups) was looked up
    resync_round: int = 0
    _reconcilers: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(RECONCILE_CONCURRENCY))

    def __post_init__(self) -> None:
        if self.elector is not None:
            self.leading = False
            self.elector.on_change = self.set_leading
        metrics.LEADER.set(1 if self.leading else 0)

    def set_leading(self, leading: bool) -> None:
        """Leadership changed: a new leader reconciles every job it knows at once; a former one stops acting."""
        self.leading = leading
        metrics.LEADER.set(1 if leading else 0)
        if leading:
            for key, slot in list(self.slots.items()):
                slot.triggered_at = None  # time spent standing by is not reconcile lag
                self.spawn(key)

    # -- triggering ---------------------------------------------------------------------------------------------
    async def trigger(self, key: Key) -> None:
        """Reconcile `key` now, or right after the reconcile already running for it."""
        slot = self.slots.setdefault(key, JobSlot())
        slot.dirty = True
        if not self.leading:
            return
        _mark_triggered(slot)
        if slot.running:
            return
        slot.running = True
        try:
            while slot.dirty:
                async with self._reconcilers:
                    slot.dirty = False
                    _observe_lag(slot)
                    await self._reconcile_once(key, slot)
        finally:
            slot.running = False

    def schedule(self, key: Key, slot: JobSlot, delay: float) -> None:
        """Trigger `key` after `delay` seconds, unless an earlier requeue is already due."""
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        pending = slot.requeue is not None and not slot.requeue.cancelled() and slot.requeue_at > loop.time()
        if pending and slot.requeue_at <= due:
            return
        if slot.requeue is not None:
            slot.requeue.cancel()
        slot.requeue_at = due
        slot.requeue = loop.call_at(due, self.spawn, key)

    def spawn(self, key: Key) -> None:
        """Trigger `key` in a background task (the lag clock starts now, not when the task gets to run)."""
        slot = self.slots.get(key)
        if slot is not None and self.leading:
            _mark_triggered(slot)
            if slot.running:  # the running reconcile picks it up: no task needed (a gang's pod events)
                slot.dirty = True
                return
        self._keep(asyncio.ensure_future(self.trigger(key)))

    def _keep(self, task: asyncio.Future[None]) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_report_crash)

    def watched(self, key: Key, body: Mapping[str, Any]) -> None:
        """A watch event's body of the job: the next reconcile starts from it, unless it knows a newer one."""
        self.slots.setdefault(key, JobSlot()).cached.offer(body)

    def forget(self, key: Key) -> None:
        slot = self.slots.pop(key, None)
        if slot and slot.requeue:
            slot.requeue.cancel()
        self._publish_phases()

    def _publish_phases(self) -> None:
        metrics.publish_phases({key: slot.phase for key, slot in self.slots.items() if slot.phase})

    # -- one reconcile ------------------------------------------------------------------------------------------
    async def _reconcile_once(self, key: Key, slot: JobSlot) -> None:
        assert self.client is not None
        started, stage = time.perf_counter(), "observe"
        try:
            body = slot.cached.body
            if body is None:
                body = await self.client.get(KIND, *key)
                if body is None:
                    self.forget(key)
                    return
                slot.cached.offer(body)
            job = JobView.from_body(body)
            await self._discover()
            slot.metrics_port = int((job.spec.get("metrics") or {}).get("port") or DEFAULT_METRICS_PORT)
            if slot.uid != job.uid:  # a new job with the same name: forget what we knew about the old one
                slot.uid, slot.known_children, slot.expectations = job.uid, set(), Expectations()
            observed = await self._observe(job, slot)
            stage = "decide"
            progress, slot.progress = slot.progress, None
            now = self.clock()
            decision = self.decide(job, observed, now, self.settings, progress)
            stage = "apply"
            if not await self._apply(job, body, slot, decision, now):
                slot.dirty = True  # conflict: re-read and decide again
                await asyncio.sleep(CONFLICT_PAUSE_SECONDS)
                return
            if decision.requeue_after is not None:
                self.schedule(key, slot, decision.requeue_after)
        except Exception:
            slot.cached.invalidate()  # start the retry from the API server's view
            metrics.RECONCILE_ERRORS.labels(stage).inc()
            log.exception("reconcile of job %s/%s failed (%s); retrying", *key, stage)
            self.schedule(key, slot, ERROR_RETRY_SECONDS)
        finally:
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)

    async def _discover(self) -> None:
        """Once per process: whether native gangs (scheduling.k8s.io/v1beta1 PodGroups) can be used."""
        if self.discovered:
            return
        assert self.client is not None
        native = await self.client.serves(POD_GROUP_API_VERSION, "podgroups")
        self.settings = replace(self.settings, native_gang=native)
        self.discovered = True
        log.info(
            "native gang scheduling (%s PodGroups): %s", POD_GROUP_API_VERSION, "served" if native else "not served"
        )

    # -- observe ------------------------------------------------------------------------------------------------
    async def _observe(self, job: JobView, slot: JobSlot) -> Observed:
        pods, taken = self._observe_pods(job, slot)
        config = await self._observe_config_and_service(job, slot, len(pods), taken)
        return Observed(
            pods=tuple(pods),
            config_map="ConfigMap" in slot.known_children,
            service="Service" in slot.known_children,
            taken=frozenset(taken),
            config=config,
            create_failure=slot.create_failure,
            metrics_unreachable=slot.metrics_unreachable,
            gpu_memory_bytes=self._gpu_memory(job),
            unreachable_nodes=frozenset(self.unreachable_index or ()),
        )

    def _gpu_memory(self, job: JobView) -> int | None:
        """Memory of one GPU on the worst node the job's pods may land on (None: no such node declares it)."""
        if self.nodes_index is None or job.status.get("phase") in TERMINAL_PHASES:
            return None
        selector = (job.spec.get("scheduling") or {}).get("nodeSelector") or {}
        nodes = (node for views in self.nodes_index.values() for node in views)
        return gpu_memory_bytes(nodes, selector if isinstance(selector, dict) else {})

    def _indexed_pods(self, key: Key) -> list[PodView]:
        return list(self.pods_index.get(key, ())) if self.pods_index is not None else []

    def _observe_pods(self, job: JobView, slot: JobSlot) -> tuple[list[PodView], set[str]]:
        """This job's pods (as indexed, plus our writes the index has not seen yet), and the names namesakes hold."""
        merged = slot.expectations.merge(self._indexed_pods((job.namespace, job.name)), self.clock())
        # Children of a deleted job with the same name linger until garbage-collected: not ours, names still taken.
        ours = [pod for pod in merged if pod.owner_uid in (None, job.uid)]
        taken = {pod.name for pod in merged if pod.owner_uid not in (None, job.uid)}
        return ours, taken

    async def _observe_config_and_service(
        self, job: JobView, slot: JobSlot, pod_count: int, taken: set[str]
    ) -> dict[str, str] | None:
        """Look up the ConfigMap and Service when it matters; adds a namesake's to `taken`; the config's data.

        Status is written before children are created, so a job without status has none of ours yet; and reconcile
        creates nothing for a finished job. Either way there is nothing to look up. When pods are about to be
        (re)created, look again: their ConfigMap and Service must exist and be this job's.
        """
        assert self.client is not None
        if not job.status or job.status.get("phase") in TERMINAL_PHASES:
            return None
        refresh = pod_count < int(job.spec.get("nodes") or 1)
        config: dict[str, str] | None = None
        for kind, child in (("ConfigMap", config_map_name(job.name)), ("Service", service_name(job.name))):
            if kind in slot.known_children and not refresh:
                continue
            found = await self.client.get(kind, job.namespace, child)
            if found is not None and controller_uid(found) in (None, job.uid):
                slot.known_children.add(kind)
                if kind == "ConfigMap":
                    config = dict(found.get("data") or {})
                continue
            slot.known_children.discard(kind)
            if found is not None:
                taken.add(child)
        return config

    # -- apply --------------------------------------------------------------------------------------------------
    async def _apply(
        self, job: JobView, body: dict[str, Any], slot: JobSlot, decision: Decision, now: datetime
    ) -> bool:
        """Write the decision in its safe order; False when the status write lost a race (nothing else written)."""
        assert self.client is not None
        patch = self._status_patch_now(job, slot, decision)
        if patch:
            resource_version = body.get("metadata", {}).get("resourceVersion")
            written = await self.client.patch_job_status(job.namespace, job.name, patch, resource_version)
            if written is None:
                log.info("job %s/%s: status changed under us; reconciling again", job.namespace, job.name)
                slot.cached.invalidate()
                return False
            slot.cached.offer(written)
            slot.status_budget = slot.status_budget.spend(time.monotonic(), self._status_interval(job))
        self._record_transition(job, slot, decision)
        await self._delete_children(job, slot, decision, now)
        for manifest in decision.updates:  # before the pods that mount it are created
            kind, child = manifest["kind"], manifest["metadata"]["name"]
            try:
                await self.client.merge_patch(kind, job.namespace, child, {"data": manifest["data"]})
            except ApiError as error:
                if not is_rejection(error):
                    raise
                self._rejected(job, slot, [str(error)], now)  # no pods on a stale config: they wait for the retry
                decision.creates = []
        await self._create_children(job, slot, decision, now)
        await gather_limited([self._post_event(body, event) for event in decision.events])
        if decision.delete_job:
            log.info("job %s/%s: ttlSecondsAfterFinished expired; deleting the job", job.namespace, job.name)
            await self.client.delete(KIND, job.namespace, job.name)
        return True

    def _status_patch_now(self, job: JobView, slot: JobSlot, decision: Decision) -> dict[str, Any] | None:
        """The status patch to write now: None when it is only routine (status_writes.py), nothing else is being
        written, and the job's last status write is recent; the reconcile is then requeued for when it is due."""
        patch = decision.status_patch
        if not patch or decision.creates or decision.deletes or decision.force_deletes or decision.updates:
            return patch
        if not routine_only(decision.old_status, decision.status):
            return patch
        wait = slot.status_budget.routine_wait(time.monotonic(), self._status_interval(job))
        if wait <= 0:
            return patch
        decision.requeue(wait)
        return None

    def _status_interval(self, job: JobView) -> float:
        return status_interval(self.status_interval_seconds, run_policy_of(job.spec).stall_timeout_seconds)

    def _record_transition(self, job: JobView, slot: JobSlot, decision: Decision) -> None:
        old_phase, new_phase = job.status.get("phase"), decision.phase
        if new_phase and new_phase != old_phase:
            metrics.TRANSITIONS.labels(old_phase or "", new_phase).inc()
            restarts = decision.status.get("restarts")
            log.info("job %s/%s: phase %s -> %s (restarts=%s)", job.namespace, job.name, old_phase, new_phase, restarts)
        if decision.status.get("restarts", 0) > job.status.get("restarts", 0):
            metrics.GANG_RESTARTS.inc()
        slot.phase = new_phase
        self._publish_phases()

    async def _create_children(self, job: JobView, slot: JobSlot, decision: Decision, now: datetime) -> None:
        assert self.client is not None
        creates = [self.client.create(manifest) for manifest in decision.creates]
        results = await gather_limited(creates, limit=WRITE_CONCURRENCY)
        rejected: list[str] = []
        for manifest, result in zip(decision.creates, results, strict=True):
            kind, name = manifest["kind"], manifest["metadata"]["name"]
            if is_rejection(result):
                rejected.append(str(result))
                continue
            if isinstance(result, BaseException):
                _raise_unless_gone(result, f"create {kind} {job.namespace}/{name}")
                continue
            if kind == "Pod":
                view = replace(pod_view(manifest), created=now)
                slot.expectations.created(view, now)
                if result:
                    metrics.PODS_CREATED.inc()
                    log.info("job %s/%s: created pod %s (attempt %s)", job.namespace, job.name, name, view.attempt)
            elif result:  # a 409 may be a deleted namesake's leftover: the next _observe looks at the owner
                slot.known_children.add(kind)
        if rejected:
            self._rejected(job, slot, rejected, now)
        elif decision.creates:
            slot.create_failure = None

    def _rejected(self, job: JobView, slot: JobSlot, errors: list[str], now: datetime) -> None:
        """Writes the API server refused: handed to the next reconcile, which runs at once to report them."""
        message = errors[0] if len(errors) == 1 else f"{len(errors)} creates rejected; first: {errors[0]}"
        log.warning("job %s/%s: %s", job.namespace, job.name, message)
        metrics.CREATES_REJECTED.inc(len(errors))
        slot.create_failure = CreateFailure(message, now)
        slot.dirty = True  # report it now (the next reconcile holds creates back until the retry is due)

    async def _delete_children(self, job: JobView, slot: JobSlot, decision: Decision, now: datetime) -> None:
        assert self.client is not None
        attempts = {pod.name: pod.attempt for pod in self._indexed_pods((job.namespace, job.name))}
        deletes = [self.client.delete(kind, job.namespace, name) for kind, name in decision.deletes]
        deletes += [self.client.delete("Pod", job.namespace, name, grace_seconds=0) for name in decision.force_deletes]
        results = await gather_limited(deletes, limit=WRITE_CONCURRENCY)
        targets = [*decision.deletes, *(("Pod", name) for name in decision.force_deletes)]
        for (kind, name), result in zip(targets, results, strict=True):
            if isinstance(result, BaseException):
                _raise_unless_gone(result, f"delete {kind} {job.namespace}/{name}")
                continue
            if kind == "Pod":
                slot.expectations.deleted(name, attempts.get(name, -1), now)
                if result:
                    metrics.PODS_DELETED.inc()
                    log.info("job %s/%s: deleted pod %s", job.namespace, job.name, name)

    async def _post_event(self, job_body: dict[str, Any], event: Event) -> None:
        assert self.client is not None
        try:
            await self.client.create(event_manifest(job_body, event, self.clock()))
        except ApiError as error:  # an event is a courtesy: the job's state does not depend on it
            meta = job_body["metadata"]
            log.warning("could not post event %s on %s/%s: %s", event.reason, meta["namespace"], meta["name"], error)

    # -- resync and progress ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the resync loop (a task, not a kopf timer: those need a finalizer on every job), and the election."""
        self.resync_task = asyncio.ensure_future(self.resync_forever())
        self.resync_task.add_done_callback(_report_crash)
        if self.elector is not None:
            self._keep(asyncio.ensure_future(self._campaign()))

    async def _campaign(self) -> None:
        assert self.elector is not None
        while self.client is None:  # kopf logs in after the startup handlers ran
            await asyncio.sleep(0.1)
        await self.elector.run(self.client)  # type: ignore[arg-type]

    async def stop(self) -> None:
        if self.resync_task:
            self.resync_task.cancel()
        if self.elector is not None and self.client is not None:
            await self.elector.release(self.client)  # type: ignore[arg-type]
        if self.client:
            await self.client.close()

    async def resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.resync_seconds)
            await self.resync()

    async def resync(self) -> None:
        """Sample the training progress of the jobs due (resync_due: the Running ones, and a slice of the other
        unfinished ones) concurrently, each read bounded by a short timeout, unreachable endpoints backed off per
        job; then re-trigger them."""
        if not self.leading:
            return
        self.resync_round += 1
        keys = resync_due(self.slots, self.resync_round)
        results = await gather_limited([self._sample_progress(key) for key in keys], limit=SCRAPE_CONCURRENCY)
        for key, result in zip(keys, results, strict=True):
            if isinstance(result, Exception):
                metrics.RECONCILE_ERRORS.labels("progress").inc()
                log.error("reading the training progress of job %s/%s failed", *key, exc_info=result)
            self.spawn(key)

    async def _sample_progress(self, key: Key) -> None:
        slot = self.slots.get(key)
        if slot is None or self.pods_index is None:
            return
        if slot.phase != "Running":
            slot.metrics_unreachable, slot.scrape_failures, slot.next_scrape_at = None, 0, 0.0
            return
        now = asyncio.get_running_loop().time()
        if now < slot.next_scrape_at:
            return
        ours = (pod for pod in self._indexed_pods(key) if pod.owner_uid in (None, slot.uid))
        pods = sorted((pod for pod in ours if pod.ip and not pod.finished), key=lambda pod: pod.rank)
        if not pods:
            return
        # Global rank 0 serves the job's metrics; c10d rendezvous usually, not always, puts it on node 0. Ask the
        # pod that served last time (else node 0) first, and the others, concurrently, only when it has no step.
        first = next((pod for pod in pods if pod.name == slot.metrics_pod), pods[0])
        rest = [pod for pod in pods if pod is not first]
        reads = [await self._read_metrics(first, slot.metrics_port)]
        if not isinstance(reads[0], tuple):
            reads += await gather_limited([self._read_metrics(pod, slot.metrics_port) for pod in rest], limit=8)
        found = next((read for read in reads if isinstance(read, tuple)), None)
        unreachable = [str(read) for read in reads if isinstance(read, MetricsUnreachable)]
        if found is not None:
            slot.metrics_pod, slot.progress = found
        if len(unreachable) < len(reads):  # something answered: the endpoint is fine, the trainer may be starting
            slot.metrics_unreachable, slot.scrape_failures, slot.next_scrape_at = None, 0, 0.0
            return
        slot.scrape_failures += 1
        slot.next_scrape_at = now + scrape_backoff(slot.scrape_failures, self.resync_seconds)
        since = slot.metrics_unreachable.since if slot.metrics_unreachable else self.clock()
        message = f"no node pod's metrics port answered ({len(reads)} tried): {unreachable[0]}"
        slot.metrics_unreachable = Unreadable(message, since)

    async def _read_metrics(self, pod: PodView, port: int) -> tuple[str, Progress] | MetricsUnreachable | None:
        """(pod name, progress) when the pod serves the job's step; the error when nothing answered; else None."""
        assert pod.ip is not None
        try:
            sample = await asyncio.to_thread(fetch_progress, pod.ip, port, SCRAPE_TIMEOUT_SECONDS)
        except MetricsUnreachable as error:
            return error
        return (pod.name, sample) if sample is not None else None


def resync_due(slots: Mapping[Key, JobSlot], round_number: int) -> list[Key]:
    """The jobs a resync reconciles: every Running one (its progress is read, stalls are judged), every one never
    reconciled yet, and a 1/SAFETY_ROUNDS slice of the other unfinished ones, so that each of those is still looked
    at once every SAFETY_ROUNDS resyncs. Their time-based needs (deadlines, startup timeout, retries, routine status
    writes) are requeued by reconcile itself and their changes arrive as watch events: the slice is a safety net,
    and at 1,000 Pending jobs re-triggering them all every resync was most of the operator's load. Finished jobs
    are left out: their pod events and TTL requeue are all they still need."""
    slice_now = round_number % SAFETY_ROUNDS
    due = []
    for key, slot in slots.items():
        if slot.phase in TERMINAL_PHASES:
            continue
        if slot.phase in (None, "Running") or zlib.crc32("/".join(key).encode()) % SAFETY_ROUNDS == slice_now:
            due.append(key)
    return due


def _mark_triggered(slot: JobSlot) -> None:
    """Start the lag clock at the first trigger since the job's last reconcile began; later ones coalesce into it."""
    if slot.triggered_at is None:
        slot.triggered_at = time.monotonic()


def _observe_lag(slot: JobSlot) -> None:
    """A reconcile starts: record how long its first trigger waited. Re-runs the controller asks for itself (a
    status conflict, a rejected create) have no trigger and are not counted."""
    if slot.triggered_at is not None:
        metrics.RECONCILE_LAG.observe(time.monotonic() - slot.triggered_at)
        slot.triggered_at = None


def is_rejection(result: object) -> bool:
    """The API server refused a write for a reason the job's owner must see (quota, admission, RBAC, invalid):
    a 4xx other than 404 (the namespace is going away) and 409 (AlreadyExists, an outcome)."""
    return isinstance(result, ApiError) and 400 <= result.status < 500 and result.status not in (404, 409)


def _raise_unless_gone(error: BaseException, what: str) -> None:
    if isinstance(error, ApiError) and error.status == 404:
        return  # e.g. the namespace is being deleted
    raise RuntimeError(f"{what} failed: {error}") from error


def _report_crash(task: asyncio.Future[None]) -> None:
    """Done-callback of background tasks: a task that died of an exception is logged and counted, not lost."""
    if task.cancelled() or task.exception() is None:
        return
    metrics.RECONCILE_ERRORS.labels("background").inc()
    log.error("background task of the operator failed", exc_info=task.exception())


def event_manifest(job_body: dict[str, Any], event: Event, now: datetime) -> dict[str, Any]:
    """A core/v1 Event about the job (kopf's own event posting is turned down to warnings)."""
    meta, stamp, host = job_body["metadata"], rfc3339(now), socket.gethostname()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name'][:200]}.", "namespace": meta["namespace"]},  # name <= 253
        "involvedObject": {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message[:1024],
        "source": {"component": "llmtrain-operator", "host": host},
        "reportingComponent": "llmtrain.dev/operator",
        "reportingInstance": f"{host}-{os.getpid()}",
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
