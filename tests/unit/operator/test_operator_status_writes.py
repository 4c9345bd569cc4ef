"""Which status changes wait for the status interval (counts, progress, a condition's wording) and which are
written at once (everything a user or a policy acts on)."""

from __future__ import annotations

import itertools

import pytest
from llmtrain_operator.status_writes import WriteBudget, routine_only, status_interval

QUEUED = {"type": "Queued", "status": "True", "reason": "WaitingForCapacity", "message": "1 of 64 node pods waiting"}
STEPPING = {"type": "Progressing", "status": "True", "reason": "StepAdvancing"}
STALLED = {"type": "Progressing", "status": "False", "reason": "Stalled"}
UNKNOWN = {"type": "Progressing", "status": "Unknown", "reason": "ProgressUnavailable"}
BASE = {"phase": "Pending", "active": 0, "restarts": 0, "conditions": [QUEUED]}


@pytest.mark.parametrize(
    "change",
    [
        {"active": 64},
        {"ready": 3, "succeeded": 1, "failed": 0},
        {"progress": {"step": 120, "loss": 2.5}},
        {"conditions": [{**QUEUED, "message": "64 of 64 node pods waiting"}]},
        {"conditions": [QUEUED, STEPPING]},
    ],
    ids=["pod count", "more counts", "progress", "a condition's message", "the first step read"],
)
def test_routine_changes_can_wait(change):
    assert routine_only(BASE, {**BASE, **change})


@pytest.mark.parametrize(
    "change",
    [
        {"phase": "Running"},
        {"restarts": 1},
        {"conditions": [{**QUEUED, "status": "False", "reason": "Admitted"}]},
        {"conditions": [QUEUED, {"type": "Running", "status": "True", "reason": "AllNodesRunning"}]},
        {"exportPath": "/checkpoints/demo/huggingface"},
        {"conditions": [QUEUED, STALLED]},
    ],
    ids=["phase", "restarts", "a condition's state", "a new condition", "anything else", "a stall"],
)
def test_transitions_are_written_at_once(change):
    assert not routine_only(BASE, {**BASE, **change})


@pytest.mark.parametrize("before", [STALLED, UNKNOWN], ids=["stalled", "unreadable"])
def test_progress_recovering_from_a_stall_or_unreadable_metrics_is_written_at_once(before):
    assert not routine_only({**BASE, "conditions": [QUEUED, before]}, {**BASE, "conditions": [QUEUED, STEPPING]})


def test_the_interval_keeps_the_stall_clock_within_half_of_the_stall_timeout():
    assert status_interval(60, 1800) == 60
    assert status_interval(60, 120) == 30  # routine news waits two intervals at most: 60 s of a 120 s timeout
    assert status_interval(60, 0) == 60  # stall detection off


def test_a_routine_write_is_affordable_an_interval_after_the_last_write():
    budget = WriteBudget()
    assert budget.routine_wait(100.0, 60) == 0  # never written
    budget = budget.spend(100.0, 60)
    assert budget.routine_wait(130.0, 60) == pytest.approx(30)
    assert budget.routine_wait(170.0, 60) == 0


def life(seconds: int, transitions: set[int], interval: float = 60.0) -> list[int]:
    """The seconds at which a job writes status, when its status has routine news every 10 s and transitions at
    the given seconds (the controller's rule: transitions at once, routine news when the budget allows)."""
    budget, writes = WriteBudget(), []
    for now in range(seconds + 1):
        if now in transitions or (now % 10 == 0 and budget.routine_wait(now, interval) == 0):
            budget = budget.spend(now, interval)
            writes.append(now)
    return writes


def test_a_ten_minute_life_writes_status_once_plus_once_a_minute_transitions_included():
    writes = life(600, transitions={0, 5, 600})  # Pending, Running, Succeeded; progress every resync
    assert len(writes) <= 1 + 10
    assert writes[0] == 0 and 5 in writes and writes[-1] == 600


def test_routine_news_waits_at_most_two_intervals_even_after_a_burst_of_transitions():
    writes = life(900, transitions={0, 2, 4, 6, 8, 300, 301, 302})
    gaps = [later - earlier for earlier, later in itertools.pairwise(writes)]
    assert max(gaps) <= 2 * 60 + 10  # + the 10 s between samples of routine news


def test_status_writes_over_a_long_life_stay_within_one_per_interval():
    writes = life(3600, transitions={0, 5, 1000, 1001, 3600})
    assert len(writes) <= 1 + 60 + 1  # a transition may borrow one write ahead
