"""When a status write can wait: routine changes (pod counts, training progress, a condition's wording, the step
advancing again) are written only when the job's write budget allows; transitions (phase, a condition's state or
reason, restarts, attempts, anything else) are written at once. A 64-node gang being scheduled changes a count on
every pod event; a running job's progress changes every resync: neither needs a write each time (the API server
and etcd pay for each).

The budget is a token bucket per job: one write per status interval, at most one saved up, at most one borrowed
by a transition. Transitions spend from it too, so a job's status writes stay within one plus one per interval
over its life (a transition may borrow one write ahead), and routine news is never held back longer than two
intervals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROUTINE_KEYS = frozenset({"active", "ready", "succeeded", "failed", "progress"})
STEP_ADVANCING = ("Progressing", "True", "StepAdvancing")  # good news about progress is routine, like progress


def routine_only(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether `new` differs from `old` only in counts, progress, the messages of conditions whose type, status and
    reason are unchanged, or in a first Progressing=True (the step advances; Stalled or Unknown are not routine,
    nor is a recovery from them)."""
    for key in old.keys() | new.keys():
        if key in ROUTINE_KEYS or old.get(key) == new.get(key):
            continue
        if key == "conditions" and _routine_conditions(old.get(key), new.get(key)):
            continue
        return False
    return True


def _routine_conditions(old: list[dict[str, Any]] | None, new: list[dict[str, Any]] | None) -> bool:
    before, after = condition_states(old), condition_states(new)
    first_step = all(state[0] != "Progressing" for state in before) and after == before | {STEP_ADVANCING}
    return before == after or first_step


def condition_states(conditions: list[dict[str, Any]] | None) -> set[tuple[Any, Any, Any]]:
    return {(c.get("type"), c.get("status"), c.get("reason")) for c in conditions or []}


def status_interval(default_s: float, stall_timeout_s: float | None) -> float:
    """The job's interval: the operator's, but short enough that the step clock the stall policy reads from
    status is never late by more than half of the job's stall timeout (two intervals: see WriteBudget)."""
    return min(default_s, stall_timeout_s / 4) if stall_timeout_s else default_s


@dataclass(frozen=True)
class WriteBudget:
    """Status writes a job may still make: `credit` as of monotonic time `at` (None: never written)."""

    credit: float = 1.0
    at: float | None = None

    def available(self, now: float, interval_s: float) -> float:
        if self.at is None:
            return 1.0
        return min(1.0, self.credit + (now - self.at) / interval_s) if interval_s > 0 else 1.0

    def spend(self, now: float, interval_s: float) -> WriteBudget:
        """After a write (routine or transition): one less, never below one borrowed."""
        return WriteBudget(max(self.available(now, interval_s) - 1.0, -1.0), now)

    def routine_wait(self, now: float, interval_s: float) -> float:
        """Seconds until a routine write is affordable (0: write now)."""
        return max(0.0, (1.0 - self.available(now, interval_s)) * interval_s)
