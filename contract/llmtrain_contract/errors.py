"""The one error type the contract raises."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config that can never work: the trainer exits with EXIT_BAD_CONFIG and the operator does not retry.

    The message starts with the field the user must change (`training.globalBatchSize: ...`).
    """
