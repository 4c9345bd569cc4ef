"""A thin JSON layer over the kubernetes client's ApiClient: plain dicts in and out, any patch type, watch streams.

The kubelet works on API objects as the server sends them (camelCase dicts), which is what fieldRef paths, merge
patches and the hosts-file renderer want; the client still does the kubeconfig, TLS and auth.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from kubernetes import client, config

MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        self.status = status
        try:
            self.reason = json.loads(body).get("reason", "")
            message = json.loads(body).get("message", body)
        except ValueError:
            self.reason, message = "", body
        super().__init__(f"{method} {path}: {status} {message}")


class Api:
    """JSON requests against the cluster the kubeconfig names."""

    def __init__(self, kubeconfig: str | None = None, api_client: client.ApiClient | None = None) -> None:
        """From a kubeconfig file, or on top of an existing ApiClient (e.g. the test fixtures')."""
        if api_client is None:
            cfg = client.Configuration()
            config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
            cfg.connection_pool_maxsize = 32
            cfg.retries = False
            api_client = client.ApiClient(cfg)
        self._client = api_client
        self.host = api_client.configuration.host

    def _send(self, method: str, path: str, query: dict | None, body: Any, content_type: str | None, timeout: Any):
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        params = self._client.param_serialize(
            method,
            path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        return self._client.call_api(*params, _request_timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        *,
        query: dict | None = None,
        body: Any = None,
        content_type: str | None = None,
        timeout: float = 30,
    ) -> dict:
        resp = self._send(method, path, query, body, content_type, timeout)
        data = resp.read()
        if not 200 <= resp.status <= 299:
            raise ApiError(resp.status, method, path, data.decode(errors="replace"))
        return json.loads(data) if data else {}

    def get(self, path: str, **query: Any) -> dict:
        return self.request("GET", path, query=query or None)

    def create(self, path: str, body: dict) -> dict:
        return self.request("POST", path, body=body)

    def merge_patch(self, path: str, body: dict) -> dict:
        return self.request("PATCH", path, body=body, content_type=MERGE_PATCH)

    def delete(self, path: str, body: dict | None = None) -> dict:
        return self.request("DELETE", path, body=body)

    def watch(self, path: str, resource_version: str, timeout_s: int = 60) -> Iterator[dict]:
        """Yield watch events ({"type", "object"}) until the server ends the stream."""
        query = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_s),
        }
        resp = self._send("GET", path, query, None, None, (10, timeout_s + 10))
        if not 200 <= resp.status <= 299:
            raise ApiError(resp.status, "WATCH", path, resp.read().decode(errors="replace"))
        raw = resp.response
        buffer = b""
        try:
            for chunk in raw.stream(65536, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            raw.release_conn()
