"""The one timestamp format the operator writes, and the ones it reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from llmtrain_operator.timestamps import parse_time, rfc3339


def test_rfc3339_is_utc_to_the_second_with_a_z():
    assert rfc3339(datetime(2026, 1, 2, 3, 4, 5, 678900, tzinfo=UTC)) == "2026-01-02T03:04:05Z"


def test_parse_time_reads_what_rfc3339_writes_and_what_the_api_server_serves():
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_time(rfc3339(moment)) == moment
    assert parse_time("2026-01-02T04:04:05+01:00") == moment.astimezone(timezone(timedelta(hours=1)))
    assert parse_time(None) is None and parse_time("") is None
