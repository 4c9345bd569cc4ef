"""The one RFC 3339 format the operator writes (status times, condition transitions, events) and reads back."""

from __future__ import annotations

from datetime import datetime


def rfc3339(moment: datetime) -> str:
    """UTC to the second with a Z suffix, as the API server writes its own timestamps."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    """An RFC 3339 timestamp as the API server serves it (Z or an offset); None for an absent one."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
