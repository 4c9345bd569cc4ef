"""kopf wiring: events in, `reconcile()` decisions applied out. No policy lives here.

* LLMTrainingJob events and node-pod events both just *trigger* a reconcile of the job; triggers that arrive while
  one runs are coalesced into a single follow-up run (a 64-pod gang emits hundreds of pod events).
* Node pods are kept in a kopf index (label llmtrain.dev/job-name) as PodViews, so a reconcile lists nothing.
* A resync task (not a kopf timer: those need a finalizer on every job, which blocks deletion while the operator is
  down) re-triggers every job each --resync-seconds and reads rank 0's training metrics for status.progress.
* Apply order: status first (conditional on resourceVersion), then creates/deletes, then events. A conflict means
  another write raced us: drop the decision and reconcile again from fresh state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import kopf

from . import metrics
from .api import TERMINAL_PHASES, Progress
from .constants import GROUP, KIND, LABEL_JOB, PLURAL, VERSION, config_map_name, service_name
from .expectations import Expectations
from .kubeapi import ApiError, KubeClient, gather_limited
from .observe import PodView, controller_uid, pod_view
from .progress import fetch_progress
from .reconcile import Decision, JobView, Observed, OperatorSettings, reconcile, rfc3339

log = logging.getLogger("llmtrain_operator")
Key = tuple[str, str]  # (namespace, job name)


@dataclass
class _Slot:
    """Per-job coalescing state."""

    running: bool = False
    dirty: bool = False
    requeue: asyncio.TimerHandle | None = None
    requeue_at: float = 0.0
    uid: str = ""
    known_children: set[str] = field(default_factory=set)  # "ConfigMap"/"Service" seen to exist
    expectations: Expectations = field(default_factory=Expectations)
    progress: Progress | None = None
    phase: str | None = None


@dataclass
class Operator:
    """Everything the handlers share; one instance per operator process."""

    settings: OperatorSettings
    resync_seconds: float = 10.0
    client: KubeClient | None = None
    pods_index: Any = None  # kopf.Index[Key, PodView], set by the first handler call
    slots: dict[Key, _Slot] = field(default_factory=dict)
    resync_task: asyncio.Task[None] | None = None
    _background: set[asyncio.Future[None]] = field(default_factory=set)

    # -- triggering ---------------------------------------------------------------------------------------------
    async def trigger(self, key: Key) -> None:
        """Reconcile `key` now, or right after the reconcile already running for it."""
        slot = self.slots.setdefault(key, _Slot())
        slot.dirty = True
        if slot.running:
            return
        slot.running = True
        try:
            while slot.dirty:
                slot.dirty = False
                await self._reconcile_once(key, slot)
        finally:
            slot.running = False

    def _schedule(self, key: Key, slot: _Slot, delay: float) -> None:
        loop = asyncio.get_running_loop()
        at = loop.time() + delay
        pending = slot.requeue is not None and not slot.requeue.cancelled() and slot.requeue_at > loop.time()
        if pending and slot.requeue_at <= at:
            return  # an earlier requeue is still to come
        if slot.requeue is not None:
            slot.requeue.cancel()
        slot.requeue_at = at
        slot.requeue = loop.call_at(at, self._spawn, key)

    def _spawn(self, key: Key) -> None:
        task = asyncio.ensure_future(self.trigger(key))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def forget(self, key: Key) -> None:
        slot = self.slots.pop(key, None)
        if slot and slot.requeue:
            slot.requeue.cancel()
        metrics.publish_phases({k: s.phase for k, s in self.slots.items() if s.phase})

    # -- one reconcile ------------------------------------------------------------------------------------------
    async def _reconcile_once(self, key: Key, slot: _Slot) -> None:
        assert self.client is not None
        namespace, name = key
        started = time.perf_counter()
        try:
            body = await self.client.get(KIND, namespace, name)
            if body is None:
                self.forget(key)
                return
            job = JobView.from_body(body)
            if slot.uid != job.uid:  # a new job with the same name: forget what we knew about the old one
                slot.uid, slot.known_children, slot.expectations = job.uid, set(), Expectations()
            observed = await self._observe(job, slot)
            progress, slot.progress = slot.progress, None
            now = datetime.now(UTC)
            decision = reconcile(job, observed, now, self.settings, progress)
            applied = await self._apply(job, body, slot, decision, now)
            if not applied:
                slot.dirty = True  # conflict: re-read and decide again
                await asyncio.sleep(0.05)
                return
            if decision.requeue_after is not None:
                self._schedule(key, slot, decision.requeue_after)
        except Exception:
            metrics.RECONCILE_ERRORS.inc()
            log.exception("reconcile of job %s/%s failed; retrying", namespace, name)
            self._schedule(key, slot, 5.0)
        finally:
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)

    async def _observe(self, job: JobView, slot: _Slot) -> Observed:
        assert self.client is not None
        indexed: list[PodView] = []
        if self.pods_index is not None:
            indexed = list(self.pods_index.get((job.namespace, job.name), ()))
        merged = slot.expectations.merge(indexed, datetime.now(UTC))
        # Children of a deleted job with the same name linger until garbage-collected: not ours, names still taken.
        pods = [p for p in merged if p.owner_uid in (None, job.uid)]
        taken = {p.name for p in merged if p.owner_uid not in (None, job.uid)}
        # Status is written before children are created, so a job without status has none of ours yet; and
        # reconcile creates nothing for a finished job. Either way there is nothing to look up. When pods are about
        # to be (re)created, look again: their ConfigMap and Service must exist and be this job's.
        finished = not job.status or job.status.get("phase") in TERMINAL_PHASES
        refresh = len(pods) < int(job.spec.get("nodes") or 1)
        config: dict[str, str] | None = None
        for kind, child in (("ConfigMap", config_map_name(job.name)), ("Service", service_name(job.name))):
            if finished or (kind in slot.known_children and not refresh):
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
        return Observed(
            pods=tuple(pods),
            config_map="ConfigMap" in slot.known_children,
            service="Service" in slot.known_children,
            taken=frozenset(taken),
            config=config,
        )

    async def _apply(self, job: JobView, body: dict[str, Any], slot: _Slot, decision: Decision, now: datetime) -> bool:
        assert self.client is not None
        ns, ctx = job.namespace, f"job {job.namespace}/{job.name}"
        patch = decision.status_patch
        if patch:
            rv = body.get("metadata", {}).get("resourceVersion")
            if await self.client.patch_job_status(ns, job.name, patch, rv) is None:
                log.info("%s: status changed under us; reconciling again", ctx)
                return False
        old_phase, new_phase = job.status.get("phase"), decision.phase
        if new_phase and new_phase != old_phase:
            metrics.TRANSITIONS.labels(old_phase or "", new_phase).inc()
            log.info("%s: phase %s -> %s (restarts=%s)", ctx, old_phase, new_phase, decision.status.get("restarts"))
        if decision.status.get("restarts", 0) > job.status.get("restarts", 0):
            metrics.GANG_RESTARTS.inc()
        slot.phase = new_phase
        metrics.publish_phases({k: s.phase for k, s in self.slots.items() if s.phase})

        await self._delete_children(job, slot, decision, now)
        for manifest in decision.updates:  # before the pods that mount it are created
            kind, child = manifest["kind"], manifest["metadata"]["name"]
            await self.client.merge_patch(kind, ns, child, {"data": manifest["data"]})
        await self._create_children(job, slot, decision, now)
        await gather_limited([self._post_event(body, e.type, e.reason, e.message) for e in decision.events])
        if decision.delete_job:
            log.info("%s: ttlSecondsAfterFinished expired; deleting the job", ctx)
            await self.client.delete(KIND, ns, job.name)
        return True

    async def _create_children(self, job: JobView, slot: _Slot, decision: Decision, now: datetime) -> None:
        assert self.client is not None
        results = await gather_limited([self.client.create(m) for m in decision.creates], limit=64)
        for manifest, result in zip(decision.creates, results, strict=True):
            kind, name = manifest["kind"], manifest["metadata"]["name"]
            if isinstance(result, BaseException):
                self._raise_unless_gone(result, f"create {kind} {job.namespace}/{name}")
                continue
            if kind == "Pod":
                view = replace(pod_view(manifest), created=now)
                slot.expectations.created(view, now)
                if result:
                    metrics.PODS_CREATED.inc()
                    log.info("job %s/%s: created pod %s (attempt %s)", job.namespace, job.name, name, view.attempt)
            elif result:  # a 409 may be a deleted namesake's leftover: the next _observe looks at the owner
                slot.known_children.add(kind)

    async def _delete_children(self, job: JobView, slot: _Slot, decision: Decision, now: datetime) -> None:
        assert self.client is not None
        attempts = {p.name: p.attempt for p in (self.pods_index or {}).get((job.namespace, job.name), ())}
        results = await gather_limited(
            [self.client.delete(kind, job.namespace, n) for kind, n in decision.deletes], limit=64
        )
        for (kind, name), result in zip(decision.deletes, results, strict=True):
            if isinstance(result, BaseException):
                self._raise_unless_gone(result, f"delete {kind} {job.namespace}/{name}")
                continue
            if kind == "Pod":
                slot.expectations.deleted(name, attempts.get(name, -1), now)
                if result:
                    metrics.PODS_DELETED.inc()
                    log.info("job %s/%s: deleted pod %s", job.namespace, job.name, name)

    @staticmethod
    def _raise_unless_gone(error: BaseException, what: str) -> None:
        if isinstance(error, ApiError) and error.status == 404:
            return  # e.g. the namespace is being deleted
        raise RuntimeError(f"{what} failed: {error}") from error

    async def _post_event(self, job: dict[str, Any], type_: str, reason: str, message: str) -> None:
        assert self.client is not None
        meta = job["metadata"]
        now = rfc3339(datetime.now(UTC))
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "llmtrain-operator", "host": socket.gethostname()},
            "reportingComponent": "llmtrain.dev/operator",
            "reportingInstance": f"{socket.gethostname()}-{os.getpid()}",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.client.create(event)
        except ApiError as e:
            log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], e)

    # -- resync and progress ------------------------------------------------------------------------------------
    async def resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.resync_seconds)
            for key in list(self.slots):
                with contextlib.suppress(Exception):
                    await self._sample_progress(key)
                self._spawn(key)

    async def _sample_progress(self, key: Key) -> None:
        slot = self.slots.get(key)
        if slot is None or slot.phase != "Running" or self.pods_index is None or self.client is None:
            return
        ours = (p for p in self.pods_index.get(key, ()) if p.owner_uid in (None, slot.uid))
        pods = sorted((p for p in ours if p.ip and not p.finished), key=lambda p: p.rank)
        if not pods:
            return
        body = await self.client.get(KIND, *key)
        port = int(((body or {}).get("spec", {}).get("metrics") or {}).get("port", 9090))
        # Global rank 0 serves the job's metrics; c10d rendezvous usually, not always, puts it on node 0.
        for pod in pods:
            sample = await asyncio.to_thread(fetch_progress, pod.ip, port)
            if sample is not None:
                slot.progress = sample
                return


def in_cluster_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's service-account login, but addressing the API server the way client-go does.

    kopf's own helper hard-codes https://kubernetes.default.svc:443; the documented in-cluster contract is
    KUBERNETES_SERVICE_HOST/PORT, which also holds where the API server does not listen on 443.
    """
    info = kopf.login_with_service_account(**kwargs)
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if info is None or not host or not port:
        return info
    host = f"[{host}]" if ":" in host else host
    return replace(info, server=f"https://{host}:{port}")


def register(registry: kopf.OperatorRegistry, op: Operator) -> None:
    """Attach the handlers to `registry`, closing over `op`."""

    @kopf.on.startup(registry=registry, id="configure")
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.watching.server_timeout = 300  # ask the API server to end each watch after 5 min...
        settings.watching.client_timeout = 330  # ...and give up on a silent connection a little later
        settings.watching.connect_timeout = 10
        settings.posting.level = logging.WARNING  # our transition events are posted by Operator._post_event
        op.resync_task = asyncio.ensure_future(op.resync_forever())

    @kopf.on.cleanup(registry=registry, id="shutdown")
    async def shutdown(**_: Any) -> None:
        if op.resync_task:
            op.resync_task.cancel()
        if op.client:
            await op.client.close()

    @kopf.on.login(registry=registry, id="login")
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        info = in_cluster_login(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
        if info is not None and op.client is None:
            op.client = KubeClient(info)
        return info

    @kopf.index("pods", labels={LABEL_JOB: kopf.PRESENT}, registry=registry, id="node_pods")
    def node_pods(body: kopf.Body, namespace: str, labels: kopf.Labels, **_: Any) -> dict[Key, PodView]:
        return {(namespace, labels[LABEL_JOB]): pod_view(dict(body))}

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry, id="job_event")
    async def job_event(type: str, namespace: str, name: str, node_pods: kopf.Index, **_: Any) -> None:
        op.pods_index = node_pods
        if type == "DELETED":
            op.forget((namespace, name))
            return
        await op.trigger((namespace, name))

    @kopf.on.event("pods", labels={LABEL_JOB: kopf.PRESENT}, registry=registry, id="pod_event")
    async def pod_event(namespace: str, labels: kopf.Labels, node_pods: kopf.Index, **_: Any) -> None:
        op.pods_index = node_pods
        key = (namespace, labels[LABEL_JOB])
        if key in op.slots:  # pods of jobs we have never seen are not ours to act on yet
            await op.trigger(key)
