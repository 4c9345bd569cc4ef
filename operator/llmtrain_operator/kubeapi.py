"""A small asyncio Kubernetes API client on aiohttp, authenticated like kopf (kopf.ConnectionInfo).

The operator needs a handful of verbs on a handful of paths; talking JSON directly keeps manifests as plain dicts
(exactly what builders.py produces) and lets every write be counted for the scale benchmark.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf

from .constants import GROUP, PLURAL, VERSION
from .metrics import API_REQUESTS

log = logging.getLogger(__name__)
MERGE_PATCH = "application/merge-patch+json"

_PATHS = {
    "Pod": "/api/v1/namespaces/{ns}/pods",
    "Service": "/api/v1/namespaces/{ns}/services",
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "Event": "/api/v1/namespaces/{ns}/events",
    "PodGroup": "/apis/scheduling.k8s.io/v1beta1/namespaces/{ns}/podgroups",
    "LLMTrainingJob": f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{PLURAL}",
}


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
    _session: aiohttp.ClientSession | None = None

    def _ensure(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64, ssl=self.info.as_ssl_context()),
                headers={**self.info.as_http_headers(), "User-Agent": "llmtrain-operator"},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        session = self._ensure()
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if body is not None else {}
        url = self.info.server.rstrip("/") + path
        async with session.request(method, url, data=data, headers=headers) as response:
            text = await response.text()
            API_REQUESTS.labels(method, resource_of(path), str(response.status)).inc()
            try:
                payload = json.loads(text) if text else None
            except json.JSONDecodeError:
                payload = text
            return response.status, payload

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
        """JSON merge patch of an object we own (e.g. a re-rendered config)."""
        path, what = self.path(kind, namespace, name), f"patch {kind} {namespace}/{name}"
        _, body = await self._call("PATCH", path, what, patch, content_type=MERGE_PATCH)
        return body

    async def delete(self, kind: str, namespace: str, name: str, propagation: str = "Background") -> bool:
        """Delete; False if it was already gone."""
        options = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
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
