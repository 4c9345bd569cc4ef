"""The API server's audit log, off by default: `up --audit` records every write request (verb, resource, user,
user agent, response code; no bodies), so a benchmark can count one client's writes at the server, the same way for
any client, whatever its own metrics (bench/peers compares two operators written in different languages).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")


def policy_file(state: Path) -> Path:
    return state / "audit-policy.yaml"


def log_file(state: Path) -> Path:
    return state / "logs" / "audit.log"


def policy() -> dict:
    """Metadata of write requests once answered (ResponseComplete); reads and watches are not logged."""
    return {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived", "ResponseStarted", "Panic"],
        "rules": [{"level": "Metadata", "verbs": list(WRITE_VERBS)}, {"level": "None"}],
    }


def apiserver_flags(state: Path) -> list[str]:
    return [
        f"--audit-policy-file={policy_file(state)}",
        f"--audit-log-path={log_file(state)}",
        "--audit-log-format=json",
        "--audit-log-maxsize=200",
        "--audit-log-maxbackup=1",
    ]


def write_policy(state: Path) -> Path:
    """JSON is YAML: no YAML library needed."""
    path = policy_file(state)
    path.write_text(json.dumps(policy(), indent=2) + "\n")
    return path


def writes_by(lines: Iterable[str], user: str) -> Counter[str]:
    """Write requests `user` made, keyed "verb resource[/subresource] code", from audit log lines (JSON events).

    Lines that are not complete events (the log being written as it is read) are skipped.
    """
    counts: Counter[str] = Counter()
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("user", {}).get("username") != user or event.get("verb") not in WRITE_VERBS:
            continue
        ref = event.get("objectRef") or {}
        resource = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        counts[f"{event['verb']} {resource} {event.get('responseStatus', {}).get('code', '?')}"] += 1
    return counts


def summarize(counts: Counter[str]) -> dict[str, int]:
    """Totals a table shows: all writes, those to Events apart (operators differ most in how chatty they are)."""
    events = sum(n for key, n in counts.items() if key.split()[1] == "events")
    return {"writes": sum(counts.values()) - events, "event_writes": events}
