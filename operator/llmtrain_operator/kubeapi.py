"""A small asyncio Kubernetes API client on aiohttp, authenticated like kopf (kopf.ConnectionInfo).

The operator needs a handful of verbs on a handful of paths; talking JSON directly keeps manifests as plain dicts
(exactly what builders.py produces) and lets every write be counted for the scale benchmark. It behaves like the
real clients (client-go, kubernetes.aio) where it matters:

* 401 Unauthorized: log in again (the same kopf login handler the operator started with, which re-reads the
  service account's projected token file: bound tokens rotate) and repeat the request once with the new credentials.
* 429 and 5xx (and a dropped connection): retried with full-jitter exponential backoff, honouring Retry-After;
  every write the operator makes is safe to repeat (fixed names -> 409, delete -> 404, conditional status patch).
* At most `max_in_flight` requests at a time, whatever the callers do.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import kopf

from .constants import GROUP, PLURAL, VERSION
from .metrics import API_REQUESTS, API_RETRIES

log = logging.getLogger(__name__)
MERGE_PATCH = "application/merge-patch+json"
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
Login = Callable[[], "kopf.ConnectionInfo | None"]

_PATHS = {
    "Pod": "/api/v1/namespaces/{ns}/pods",
    "Service": "/api/v1/namespaces/{ns}/services",
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "Event": "/api/v1/namespaces/{ns}/events",
    "PodGroup": "/apis/scheduling.k8s.io/v1beta1/namespaces/{ns}/podgroups",
    "Lease": "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
    "LLMTrainingJob": f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{PLURAL}",
}


@dataclass(frozen=True)
class Backoff:
    """How long to wait before retry `attempt` (0-based): full jitter over an exponential ceiling (the AWS
    architecture blog's "full jitter", as client-go's flowcontrol does), or what the server's Retry-After asks."""

    attempts: int = 6  # requests in all, the first included
    base: float = 0.2  # seconds: the ceiling of the first retry's wait
    cap: float = 10.0  # seconds: the largest ceiling
    max_retry_after: float = 60.0  # a Retry-After longer than this is cut to it

    def delay(self, attempt: int, retry_after: str | None = None, rand: float = 1.0) -> float:
        server = parse_retry_after(retry_after)
        if server is not None:
            return min(server, self.max_retry_after)
        return rand * min(self.cap, self.base * 2**attempt)


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the form the API server sends); None when absent or not a number."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return max(seconds, 0.0) if seconds is not None else None


def resource_of(path: str) -> str:
    """'/api/v1/namespaces/ns/pods/x' -> 'pods'; '.../llmtrainingjobs/x/status' -> 'llmtrainingjobs/status'."""
    parts = path.split("?")[0].strip("/").split("/")
    if "namespaces" in parts:
        rest = parts[parts.index("namespaces") + 2 :]
        if rest:
            return rest[0] + ("/" + rest[2] if len(rest) > 2 else "")
    return parts[-1]


class ApiError(Exception):
    def __init__(self, status: int, body: Any, what: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {body.get('message') if isinstance(body, dict) else body}")
        self.status = status
        self.body = body


@dataclass
class KubeClient:
    info: kopf.ConnectionInfo
    timeout: float = 30.0
    login: Login | None = None  # called again after a 401: fresh credentials (a rotated token), or None
    backoff: Backoff = field(default_factory=Backoff)
    max_in_flight: int = 32
    _session: aiohttp.ClientSession | None = None
    _slots: asyncio.Semaphore | None = None
    _relogin: asyncio.Lock | None = None

    def _ensure(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_in_flight * 2, ssl=self.info.as_ssl_context()),
                headers={"User-Agent": "llmtrain-operator"},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        """One API call, retried as the module docstring says; the final status and body."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_in_flight)
        reauthenticated = False
        attempt = 0
        while True:
            info = self.info
            async with self._slots:
                try:
                    status, payload, retry_after = await self._send(info, method, path, body, content_type)
                except (aiohttp.ClientConnectionError, TimeoutError) as error:
                    if attempt + 1 >= self.backoff.attempts:
                        raise
                    status, payload, retry_after = 0, str(error), None
            if status == 401 and not reauthenticated and self.login is not None:
                reauthenticated = True
                await self._reauthenticate(info)
                continue
            retryable = status in RETRYABLE_STATUSES or status == 0  # 0: the connection dropped
            if not retryable or attempt + 1 >= self.backoff.attempts:
                return status, payload
            delay = self.backoff.delay(attempt, retry_after, random.random())
            API_RETRIES.labels(str(status)).inc()
            log.info("%s %s: %s; retry %d in %.2fs", method, path, status or payload, attempt + 1, delay)
            attempt += 1
            await asyncio.sleep(delay)

    async def _send(
        self, info: kopf.ConnectionInfo, method: str, path: str, body: Any, content_type: str
    ) -> tuple[int, Any, str | None]:
        session = self._ensure()
        data = None if body is None else json.dumps(body)
        headers = {**info.as_http_headers(), **({"Content-Type": content_type} if body is not None else {})}
        url = info.server.rstrip("/") + path
        async with session.request(method, url, data=data, headers=headers) as response:
            text = await response.text()
            API_REQUESTS.labels(method, resource_of(path), str(response.status)).inc()
            try:
                payload = json.loads(text) if text else None
            except json.JSONDecodeError:
                payload = text
            return response.status, payload, response.headers.get("Retry-After")

    async def _reauthenticate(self, rejected: kopf.ConnectionInfo) -> None:
        """Log in again, once for all the requests that were refused with the same credentials."""
        assert self.login is not None
        if self._relogin is None:
            self._relogin = asyncio.Lock()
        async with self._relogin:
            if self.info is not rejected:
                return  # another request logged in meanwhile
            fresh = await asyncio.to_thread(self.login)
            if fresh is not None:
                log.info("the API server refused our credentials (401); logged in again")
                self.info = fresh

    @staticmethod
    def path(kind: str, namespace: str, name: str | None = None) -> str:
        base = _PATHS[kind].format(ns=namespace)
        return f"{base}/{name}" if name else base

    async def _call(
        self,
        method: str,
        path: str,
        what: str,
        body: Any = None,
        *,
        expected: tuple[int, ...] = (),
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        """One request; a status of 300 or more raises ApiError unless it is one of the `expected` outcomes."""
        status, payload = await self.request(method, path, body, content_type)
        if status >= 300 and status not in expected:
            raise ApiError(status, payload, what)
        return status, payload

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        path = self.path(kind, namespace, name)
        status, body = await self._call("GET", path, f"get {kind} {namespace}/{name}", expected=(404,))
        return None if status == 404 else body

    async def create(self, manifest: dict[str, Any]) -> bool:
        """Create; False if it already exists (deterministic names make that the idempotent outcome)."""
        kind, meta = manifest["kind"], manifest["metadata"]
        what = f"create {kind} {meta['namespace']}/{meta.get('name')}"
        status, _ = await self._call("POST", self.path(kind, meta["namespace"]), what, manifest, expected=(409,))
        return status != 409

    async def merge_patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """JSON merge patch of an object we own (e.g. a re-rendered config); with metadata.resourceVersion in the
        patch, the API server applies it only to that version (409 otherwise)."""
        path, what = self.path(kind, namespace, name), f"patch {kind} {namespace}/{name}"
        _, body = await self._call("PATCH", path, what, patch, content_type=MERGE_PATCH)
        return body

    async def delete(
        self, kind: str, namespace: str, name: str, propagation: str = "Background", grace_seconds: int | None = None
    ) -> bool:
        """Delete; False if it was already gone. grace_seconds=0 removes the object without waiting for a kubelet."""
        options: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        if grace_seconds is not None:
            options["gracePeriodSeconds"] = grace_seconds
        path, what = self.path(kind, namespace, name), f"delete {kind} {namespace}/{name}"
        status, _ = await self._call("DELETE", path, what, options, expected=(404,))
        return status != 404

    async def serves(self, api_version: str, resource: str) -> bool:
        """Discovery: does the API server serve `resource` in group/version `api_version`?"""
        status, body = await self._call("GET", f"/apis/{api_version}", f"discover {api_version}", expected=(404,))
        return status == 200 and any(item.get("name") == resource for item in (body or {}).get("resources", []))

    async def patch_job_status(
        self, namespace: str, name: str, patch: dict[str, Any], resource_version: str | None
    ) -> dict[str, Any] | None:
        """Merge-patch status, conditional on resourceVersion (409 -> None: someone wrote first, reconcile again)."""
        body: dict[str, Any] = {"status": patch}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        path = self.path("LLMTrainingJob", namespace, name) + "/status"
        what = f"patch status of {namespace}/{name}"
        status, result = await self._call("PATCH", path, what, body, expected=(404, 409), content_type=MERGE_PATCH)
        return None if status in (404, 409) else result


async def gather_limited(coros: list[Any], limit: int = 16) -> list[Any]:
    """Run coroutines concurrently, at most `limit` at a time; exceptions are returned, not raised."""
    semaphore = asyncio.Semaphore(limit)

    async def bounded(coro: Any) -> Any:
        async with semaphore:
            return await coro

    return await asyncio.gather(*(bounded(coro) for coro in coros), return_exceptions=True)
