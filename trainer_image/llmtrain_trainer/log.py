"""One-line log records with job, rank and step context: `key=value` text or JSON lines."""

from __future__ import annotations

import json
import sys
import time


class RunLog:
    def __init__(self, *, job: str, rank: int, json_lines: bool, enabled: bool):
        self.job = job
        self.rank = rank
        self.json_lines = json_lines
        self.enabled = enabled

    def __call__(self, event: str, *, always: bool = False, **fields) -> None:
        """Print one record (rank 0 only unless `always`: errors are worth hearing from every rank)."""
        if not (self.enabled or always):
            return
        record = {"ts": round(time.time(), 3), "event": event, "job": self.job, "rank": self.rank, **fields}
        if self.json_lines:
            line = json.dumps(record)
        else:
            ctx = f"[llmtrain job={self.job} rank={self.rank}]"
            line = " ".join([ctx, event, *(f"{k}={_fmt(v)}" for k, v in fields.items())])
        print(line, file=sys.stdout, flush=True)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
