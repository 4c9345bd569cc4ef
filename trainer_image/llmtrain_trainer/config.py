"""The trainer's view of the contract: TrainerConfig and its sections come from `llmtrain_contract` (torch-free).

The trainer validates its config before it touches torch; the names below are the ones the trainer's modules use.
"""

from __future__ import annotations

from llmtrain_contract.config import CheckpointConfig, TrainerConfig, format_validation_error, load_config
from llmtrain_contract.errors import ConfigError
from llmtrain_contract.sections import (
    DataSection as DataConfig,
)
from llmtrain_contract.sections import (
    LoggingSection as LoggingConfig,
)
from llmtrain_contract.sections import (
    MetricsSection as MetricsConfig,
)
from llmtrain_contract.sections import (
    ModelSection as ModelConfig,
)
from llmtrain_contract.sections import (
    OptimizerSection as OptimizerConfig,
)
from llmtrain_contract.sections import (
    ParallelismSection as ParallelismConfig,
)
from llmtrain_contract.sections import (
    ScheduleSection as ScheduleConfig,
)
from llmtrain_contract.sections import (
    TrainingSection as TrainingConfig,
)

__all__ = [
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "LoggingConfig",
    "MetricsConfig",
    "ModelConfig",
    "OptimizerConfig",
    "ParallelismConfig",
    "ScheduleConfig",
    "TrainerConfig",
    "TrainingConfig",
    "format_validation_error",
    "load_config",
]
