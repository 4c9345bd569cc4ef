"""When a status write can wait: routine changes (pod counts, training progress, a condition's wording) are written
at most once per status interval per job; transitions (phase, a condition's state or reason, restarts, attempts,
anything else) are written at once. A 64-node gang being scheduled changes a count on every pod event; a running
job's progress changes every resync: neither needs a write each time (the API server and etcd pay for each)."""

from __future__ import annotations

from typing import Any

ROUTINE_KEYS = frozenset({"active", "ready", "succeeded", "failed", "progress"})


def routine_only(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether `new` differs from `old` only in counts, progress or the messages of conditions whose type, status
    and reason are unchanged."""
    for key in old.keys() | new.keys():
        if key in ROUTINE_KEYS or old.get(key) == new.get(key):
            continue
        if key == "conditions" and condition_states(old.get(key)) == condition_states(new.get(key)):
            continue
        return False
    return True


def condition_states(conditions: list[dict[str, Any]] | None) -> set[tuple[Any, Any, Any]]:
    return {(c.get("type"), c.get("status"), c.get("reason")) for c in conditions or []}


def status_interval(default_s: float, stall_timeout_s: float | None) -> float:
    """The job's interval: the operator's, but short enough that the step clock the stall policy reads from
    status is never late by more than a quarter of the job's stall timeout."""
    return min(default_s, stall_timeout_s / 4) if stall_timeout_s else default_s


def routine_write_wait(last_write_at: float | None, now: float, interval_s: float) -> float:
    """Seconds until a routine write is due (0: write now)."""
    return 0.0 if last_write_at is None else max(0.0, last_write_at + interval_s - now)
