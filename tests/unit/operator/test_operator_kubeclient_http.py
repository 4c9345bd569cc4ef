"""KubeClient over real HTTP (a local aiohttp server on 127.0.0.1) behaves like the real Kubernetes clients:
re-authenticates after a 401 with a rotated token, retries 429 and 5xx with backoff honouring Retry-After, never
retries other 4xx, and bounds its requests in flight."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import kopf
import pytest
from aiohttp import web
from llmtrain_operator.kubeapi import ApiError, Backoff, KubeClient, parse_retry_after

JOB_PATH = "/apis/llmtrain.dev/v1alpha1/namespaces/ns/llmtrainingjobs/demo"
FAST = Backoff(attempts=4, base=0.01, cap=0.05)


class Server:
    """An API server stand-in: answers each request with the next scripted (status, headers), then 200."""

    def __init__(self, script: list[tuple[int, dict[str, str]]] | None = None, accept_token: str | None = None):
        self.script = list(script or [])
        self.accept_token = accept_token
        self.seen: list[tuple[float, str]] = []  # (monotonic time, Authorization header)
        self.in_flight = self.peak = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((time.monotonic(), request.headers.get("Authorization", "")))
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(0.02)
            if self.accept_token is not None and request.headers.get("Authorization") != f"Bearer {self.accept_token}":
                return web.json_response({"kind": "Status", "message": "Unauthorized"}, status=401)
            if self.script:
                status, headers = self.script.pop(0)
                return web.json_response(
                    {"kind": "Status", "message": f"scripted {status}"}, status=status, headers=headers
                )
            return web.json_response({"kind": "LLMTrainingJob", "metadata": {"name": "demo"}})
        finally:
            self.in_flight -= 1


def serve(server: Server, scenario: Callable[[str], Awaitable[None]]) -> None:
    """Run `scenario(base_url)` against `server` listening on 127.0.0.1 (a free port)."""

    async def main() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", server.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            await asyncio.wait_for(scenario(f"http://127.0.0.1:{port}"), timeout=20)
        finally:
            await runner.cleanup()

    asyncio.run(main())


def client(url: str, token: str = "t", **fields: Any) -> KubeClient:
    return KubeClient(kopf.ConnectionInfo(server=url, token=token), **{"backoff": FAST, **fields})


def test_a_401_logs_in_again_with_the_rotated_token_file_and_repeats_the_request(tmp_path: Path):
    token_file = tmp_path / "token"  # the projected service-account token the kubelet rewrites
    token_file.write_text("old")
    server = Server(accept_token="new")

    def login_from_file() -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url_of[0], token=token_file.read_text())

    url_of: list[str] = []

    async def scenario(url: str) -> None:
        url_of.append(url)
        kube = KubeClient(login_from_file(), login=login_from_file, backoff=FAST)
        token_file.write_text("new")  # rotated after the operator logged in
        try:
            assert (await kube.get("LLMTrainingJob", "ns", "demo"))["metadata"]["name"] == "demo"
            assert (await kube.get("LLMTrainingJob", "ns", "demo")) is not None  # the new token is kept
        finally:
            await kube.close()

    serve(server, scenario)
    assert [auth for _, auth in server.seen] == ["Bearer old", "Bearer new", "Bearer new"]


def test_a_401_that_persists_after_logging_in_again_is_an_error(tmp_path: Path):
    server = Server(accept_token="never")
    logins = []

    async def scenario(url: str) -> None:
        def login() -> kopf.ConnectionInfo:
            logins.append(1)
            return kopf.ConnectionInfo(server=url, token="still-wrong")

        kube = client(url, login=login)
        try:
            with pytest.raises(ApiError) as raised:
                await kube.get("LLMTrainingJob", "ns", "demo")
            assert raised.value.status == 401
        finally:
            await kube.close()

    serve(server, scenario)
    assert len(logins) == 1 and len(server.seen) == 2  # one new login, one repeat: no loop


def test_a_429_is_retried_after_the_retry_after_the_server_asked_for():
    server = Server([(429, {"Retry-After": "1"})])

    async def scenario(url: str) -> None:
        kube = client(url)
        try:
            assert await kube.get("LLMTrainingJob", "ns", "demo") is not None
        finally:
            await kube.close()

    serve(server, scenario)
    (first, _), (second, _) = server.seen
    assert second - first >= 0.95  # not FAST's 10 ms: the server's 1 s


def test_a_503_is_retried_with_backoff_until_it_succeeds():
    server = Server([(503, {}), (503, {}), (500, {})])

    async def scenario(url: str) -> None:
        kube = client(url)
        try:
            assert await kube.get("LLMTrainingJob", "ns", "demo") is not None
        finally:
            await kube.close()

    serve(server, scenario)
    assert len(server.seen) == 4


def test_retries_end_after_the_backoff_s_attempts_with_the_last_error():
    server = Server([(503, {})] * 10)

    async def scenario(url: str) -> None:
        kube = client(url)
        try:
            with pytest.raises(ApiError) as raised:
                await kube.get("LLMTrainingJob", "ns", "demo")
            assert raised.value.status == 503
        finally:
            await kube.close()

    serve(server, scenario)
    assert len(server.seen) == FAST.attempts


@pytest.mark.parametrize("status", [400, 403, 422])
def test_other_4xx_are_not_retried(status: int):
    server = Server([(status, {})])

    async def scenario(url: str) -> None:
        kube = client(url)
        try:
            with pytest.raises(ApiError) as raised:
                await kube.create({"kind": "Pod", "metadata": {"name": "demo-node-0", "namespace": "ns"}})
            assert raised.value.status == status and f"scripted {status}" in str(raised.value)
        finally:
            await kube.close()

    serve(server, scenario)
    assert len(server.seen) == 1


def test_requests_in_flight_are_bounded():
    server = Server()

    async def scenario(url: str) -> None:
        kube = client(url, max_in_flight=3)
        try:
            await asyncio.gather(*(kube.get("LLMTrainingJob", "ns", "demo") for _ in range(12)))
        finally:
            await kube.close()

    serve(server, scenario)
    assert len(server.seen) == 12 and server.peak == 3


def test_backoff_is_full_jitter_under_an_exponential_ceiling_and_yields_to_retry_after():
    backoff = Backoff(base=0.2, cap=10.0, max_retry_after=60.0)
    assert [backoff.delay(attempt) for attempt in range(8)] == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
    assert backoff.delay(3, rand=0.5) == 0.8  # a random share of the ceiling
    assert backoff.delay(0, retry_after="7") == 7.0 and backoff.delay(0, retry_after="600") == 60.0
    assert parse_retry_after("Wed, 21 Oct 2026 07:28:00 GMT") is None and parse_retry_after(None) is None
