"""Process exit codes and the termination record: how the trainer tells the operator whether to retry.

torchrun exits 1 whichever way a worker failed, so a permanent failure is also written as one JSON line to the
container's termination message file (Kubernetes shows it as containerStatuses[].state.terminated.message).
The operator treats a pod as permanently failed when either its exit code or that record says so.
"""

from __future__ import annotations

import json
from typing import Any

EXIT_OK = 0
EXIT_BAD_CONFIG = 78  # sysexits EX_CONFIG: the config can never work; do not retry.
EXIT_DIVERGED = 79  # loss became NaN/inf beyond the loss scaler's reach; retrying replays the same divergence.
EXIT_SIGTERM = 143  # 128 + SIGTERM: transient (pod deleted, preempted); the gang restarts and resumes.
PERMANENT_EXIT_CODES = {EXIT_BAD_CONFIG: "InvalidConfig", EXIT_DIVERGED: "Diverged"}

TERMINATION_LOG_ENV = "LLMTRAIN_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
MAX_MESSAGE = 3000  # the kubelet keeps 4096 bytes of a termination message; leave room for the summary


def termination_record(exit_code: int, message: str, **summary: object) -> str:
    """One JSON line: {"llmtrain": true, "exitCode", "reason", "message", ...summary}; None values dropped.

    On success global rank 0 adds a summary (step, totalSteps, loss, evalLoss, lastCheckpointStep, export): the
    operator's last look at progress, since the metrics endpoint is gone once the pod has finished.
    """
    reason = "Completed" if exit_code == EXIT_OK else PERMANENT_EXIT_CODES.get(exit_code, "Error")
    record: dict[str, Any] = {
        "llmtrain": True,
        "exitCode": exit_code,
        "reason": reason,
        "message": message[:MAX_MESSAGE],
    }
    record.update({key: value for key, value in summary.items() if value is not None})
    return json.dumps(record)


def parse_termination_record(text: str | None) -> dict[str, Any] | None:
    """The trainer's record in a termination message (other lines, e.g. a traceback tail, are skipped)."""
    for line in (text or "").splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and data.get("llmtrain") is True:
            return data
    return None
