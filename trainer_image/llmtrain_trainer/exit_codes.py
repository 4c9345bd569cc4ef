"""Writing the termination record (the codes and the record's format are the contract's: llmtrain_contract)."""

from __future__ import annotations

import os
from pathlib import Path

from llmtrain_contract.exit_codes import (
    DEFAULT_TERMINATION_LOG,
    EXIT_BAD_CONFIG,
    EXIT_DIVERGED,
    EXIT_OK,
    EXIT_SIGTERM,
    TERMINATION_LOG_ENV,
    termination_record,
)

__all__ = ["EXIT_BAD_CONFIG", "EXIT_DIVERGED", "EXIT_OK", "EXIT_SIGTERM", "write_termination_message"]


def write_termination_message(exit_code: int, message: str, **summary: object) -> None:
    """Record why we exit, for the operator; best effort (outside Kubernetes the file may not be writable)."""
    path = Path(os.environ.get(TERMINATION_LOG_ENV, DEFAULT_TERMINATION_LOG))
    try:
        with path.open("w") as f:
            f.write(termination_record(exit_code, message, **summary) + "\n")
    except OSError:
        pass
