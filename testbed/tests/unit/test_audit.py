"""The API server's audit log of writes, and counting one client's writes from it."""

from __future__ import annotations

import json
from pathlib import Path

from llmtrain_testbed import audit, components, pki


def _event(user: str, verb: str, resource: str, code: int = 201, subresource: str | None = None) -> str:
    ref = {"resource": resource, "namespace": "ns", "name": "x"}
    if subresource:
        ref["subresource"] = subresource
    event = {
        "kind": "Event",
        "stage": "ResponseComplete",
        "verb": verb,
        "user": {"username": user},
        "objectRef": ref,
        "responseStatus": {"code": code},
    }
    return json.dumps(event)


def test_only_the_users_writes_are_counted_by_verb_resource_and_code():
    lines = [
        _event("op", "create", "pods"),
        _event("op", "create", "pods"),
        _event("op", "patch", "llmtrainingjobs", 200, "status"),
        _event("op", "create", "events"),
        _event("op", "create", "podgroups", 409),
        _event("other", "create", "pods"),
        _event("op", "get", "pods", 200),  # a read, should the policy ever log one
        '{"kind": "Event", "verb": "cre',  # a line still being written
    ]
    counts = audit.writes_by(lines, "op")
    assert counts == {
        "create pods 201": 2,
        "patch llmtrainingjobs/status 200": 1,
        "create events 201": 1,
        "create podgroups 409": 1,
    }
    assert audit.summarize(counts) == {"writes": 4, "event_writes": 1}


def test_the_policy_logs_write_metadata_once_and_nothing_else():
    policy = audit.policy()
    assert policy["rules"] == [{"level": "Metadata", "verbs": list(audit.WRITE_VERBS)}, {"level": "None"}]
    assert "RequestReceived" in policy["omitStages"]


def test_the_api_server_gets_the_audit_flags_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(components.paths, "binary", lambda name: Path("/bin") / name)
    certs = pki.Pki(tmp_path / "pki")
    plain = components.apiserver(tmp_path, certs).argv
    audited = components.apiserver(tmp_path, certs, audit=True).argv
    assert not any(a.startswith("--audit") for a in plain)
    assert f"--audit-log-path={tmp_path / 'logs' / 'audit.log'}" in audited
    assert audited[: len(plain)] == plain
    path = audit.write_policy(tmp_path)
    assert json.loads(path.read_text()) == audit.policy()
