"""Which status changes wait for the status interval (counts, progress, a condition's wording) and which are
written at once (everything a user or a policy acts on)."""

from __future__ import annotations

import pytest
from llmtrain_operator.status_writes import routine_only, routine_write_wait, status_interval

QUEUED = {"type": "Queued", "status": "True", "reason": "WaitingForCapacity", "message": "1 of 64 node pods waiting"}
BASE = {"phase": "Pending", "active": 0, "restarts": 0, "conditions": [QUEUED]}


@pytest.mark.parametrize(
    "change",
    [
        {"active": 64},
        {"ready": 3, "succeeded": 1, "failed": 0},
        {"progress": {"step": 120, "loss": 2.5}},
        {"conditions": [{**QUEUED, "message": "64 of 64 node pods waiting"}]},
    ],
    ids=["pod count", "more counts", "progress", "a condition's message"],
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
    ],
    ids=["phase", "restarts", "a condition's state", "a new condition", "anything else"],
)
def test_transitions_are_written_at_once(change):
    assert not routine_only(BASE, {**BASE, **change})


def test_the_interval_keeps_the_stall_clock_within_a_quarter_of_the_stall_timeout():
    assert status_interval(60, 1800) == 60
    assert status_interval(60, 120) == 30
    assert status_interval(60, 0) == 60  # stall detection off


def test_a_routine_write_is_due_an_interval_after_the_last_write():
    assert routine_write_wait(None, 100.0, 60) == 0  # never written
    assert routine_write_wait(100.0, 130.0, 60) == 30
    assert routine_write_wait(100.0, 170.0, 60) == 0
