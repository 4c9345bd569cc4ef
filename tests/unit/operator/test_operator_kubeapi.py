"""kubeapi.KubeClient's verbs: which API statuses are outcomes (None/False) and which raise ApiError."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from llmtrain_operator.kubeapi import ApiError, KubeClient, gather_limited

POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "demo-node-0", "namespace": "ns"}}


class ScriptedClient(KubeClient):
    """Answers every request with one status and body, and remembers what was sent."""

    def __init__(self, status: int, body: Any = None) -> None:
        super().__init__(info=None)  # type: ignore[arg-type]  # never connects
        self.answer = (status, body)
        self.sent: list[tuple[str, str, Any, str]] = []

    async def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        self.sent.append((method, path, body, content_type))
        return self.answer


def call(status: int, verb: str, *args: Any, body: Any = None) -> tuple[Any, ScriptedClient]:
    client = ScriptedClient(status, body)
    return asyncio.run(getattr(client, verb)(*args)), client


@pytest.mark.parametrize(
    ("verb", "args", "status", "expected"),
    [
        ("get", ("Pod", "ns", "demo-node-0"), 404, None),
        ("create", (POD,), 409, False),
        ("create", (POD,), 201, True),
        ("delete", ("Pod", "ns", "demo-node-0"), 404, False),
        ("delete", ("Pod", "ns", "demo-node-0"), 200, True),
        ("patch_job_status", ("ns", "demo", {"phase": "Running"}, "7"), 409, None),
        ("patch_job_status", ("ns", "demo", {"phase": "Running"}, "7"), 404, None),
    ],
)
def test_expected_statuses_are_outcomes_not_errors(verb, args, status, expected):
    result, _ = call(status, verb, *args)
    assert result == expected


@pytest.mark.parametrize(
    ("verb", "args", "what"),
    [
        ("get", ("Pod", "ns", "demo-node-0"), "get Pod ns/demo-node-0"),
        ("create", (POD,), "create Pod ns/demo-node-0"),
        ("merge_patch", ("ConfigMap", "ns", "demo-config", {"data": {}}), "patch ConfigMap ns/demo-config"),
        ("delete", ("Pod", "ns", "demo-node-0"), "delete Pod ns/demo-node-0"),
        ("patch_job_status", ("ns", "demo", {}, None), "patch status of ns/demo"),
    ],
)
def test_other_failures_raise_api_error_naming_the_call(verb, args, what):
    with pytest.raises(ApiError) as raised:
        call(422, verb, *args, body={"message": "spec.x: Invalid value"})
    assert raised.value.status == 422
    assert str(raised.value) == f"{what}: HTTP 422: spec.x: Invalid value"


def test_a_get_returns_the_object():
    result, client = call(200, "get", "LLMTrainingJob", "ns", "demo", body={"kind": "LLMTrainingJob"})
    assert result == {"kind": "LLMTrainingJob"}
    assert client.sent == [
        ("GET", "/apis/llmtrain.dev/v1alpha1/namespaces/ns/llmtrainingjobs/demo", None, "application/json")
    ]


def test_a_status_patch_is_a_merge_patch_conditional_on_the_resource_version():
    result, client = call(200, "patch_job_status", "ns", "demo", {"phase": "Running"}, "7", body={"ok": True})
    assert result == {"ok": True}
    [(method, path, body, content_type)] = client.sent
    assert (method, path, content_type) == (
        "PATCH",
        "/apis/llmtrain.dev/v1alpha1/namespaces/ns/llmtrainingjobs/demo/status",
        "application/merge-patch+json",
    )
    assert body == {"status": {"phase": "Running"}, "metadata": {"resourceVersion": "7"}}


def test_a_delete_propagates_in_the_background():
    _, client = call(200, "delete", "Pod", "ns", "demo-node-0")
    assert client.sent[0][2]["propagationPolicy"] == "Background"


def test_gather_limited_returns_exceptions_in_order_and_bounds_concurrency():
    running, peak = 0, 0

    async def work(value: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001)
        running -= 1
        if value == 2:
            raise ValueError(value)
        return value

    results = asyncio.run(gather_limited([work(value) for value in range(6)], limit=2))
    assert results[:2] == [0, 1] and isinstance(results[2], ValueError) and results[3:] == [3, 4, 5]
    assert peak == 2
