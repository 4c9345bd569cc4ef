"""Process exit codes and the termination message: how the trainer tells the operator whether to retry.

torchrun exits 1 whichever way a worker failed, so a permanent failure is also written as one JSON line to the
container's termination message file (Kubernetes shows it as containerStatuses[].state.terminated.message).
The operator treats a pod as permanently failed when either its exit code or that message says so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

EXIT_OK = 0
EXIT_BAD_CONFIG = 78  # sysexits EX_CONFIG: the config can never work; do not retry.
EXIT_DIVERGED = 79  # loss became NaN/inf beyond the loss scaler's reach; retrying replays the same divergence.
PERMANENT_EXIT_CODES = {EXIT_BAD_CONFIG: "InvalidConfig", EXIT_DIVERGED: "Diverged"}

TERMINATION_LOG_ENV = "LLMTRAIN_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"


def write_termination_message(exit_code: int, message: str, **summary: object) -> None:
    """Record why we exit, for the operator; best effort (outside Kubernetes the file may not be writable).

    On success, global rank 0 adds a summary (step, loss, lastCheckpointStep): the operator's last look at
    progress, since the metrics endpoint is gone once the pod has finished.
    """
    path = Path(os.environ.get(TERMINATION_LOG_ENV, DEFAULT_TERMINATION_LOG))
    reason = "Completed" if exit_code == EXIT_OK else PERMANENT_EXIT_CODES.get(exit_code, "Error")
    record = {"llmtrain": True, "exitCode": exit_code, "reason": reason, "message": message[:3000]}
    record.update({k: v for k, v in summary.items() if v is not None})
    line = json.dumps(record)
    try:
        with path.open("w") as f:
            f.write(line + "\n")
    except OSError:
        pass
