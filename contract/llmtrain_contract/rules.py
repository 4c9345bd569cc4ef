"""Cross-field rules, written once: the operator checks them before any pod exists, the trainer at start-up.

Each rule returns `(field, message)` problems with the field as the user wrote it (`training.globalBatchSize`);
the operator prefixes `spec.`, the trainer raises `ConfigError("field: message")`. Rules the API server can check
on its own also have a CEL form here, which the CRD carries (`x-kubernetes-validations`).
"""

from __future__ import annotations

from typing import Any

from .presets import ModelShape

Problem = tuple[str, str]

# CEL forms, attached to the CRD by the API models.
CEL_WARMUP_BELOW_STEPS: dict[str, str] = {
    "rule": "!has(self.schedule) || !has(self.training) || self.schedule.warmupSteps == 0 "
    "|| self.schedule.warmupSteps < self.training.steps",
    "message": "schedule.warmupSteps must be smaller than training.steps",
    "fieldPath": ".schedule.warmupSteps",
}
CEL_PRESET_OR_DIMS: dict[str, str] = {
    "rule": "has(self.init) || has(self.preset) || (has(self.dim) && has(self.layers) && has(self.heads))",
    "message": "set model.init, model.preset, or model.dim, model.layers and model.heads",
}
# model.init takes the whole shape from the Hugging Face config.json: a second statement of it could only repeat
# it or contradict it, and the operator cannot read the volume to tell which.
MODEL_SHAPE_FIELDS = (
    "preset",
    "dim",
    "layers",
    "heads",
    "kvHeads",
    "ffnDim",
    "vocabSize",
    "maxSeqLen",
    "tieEmbeddings",
    "ropeTheta",
    "normEps",
)
CEL_INIT_ALONE: dict[str, str] = {
    "rule": "!has(self.init) || !(" + " || ".join(f"has(self.{name})" for name in MODEL_SHAPE_FIELDS) + ")",
    "message": "model.init takes the shape from its config.json: leave model.preset and the dimensions unset",
    "fieldPath": ".init",
}
CEL_HEADS_MULTIPLE_OF_KV: dict[str, str] = {
    "rule": "!has(self.heads) || !has(self.kvHeads) || self.heads % self.kvHeads == 0",
    "message": "model.heads must be a multiple of model.kvHeads",
    "fieldPath": ".kvHeads",
}
CEL_SOURCE_OR_SOURCES: dict[str, str] = {
    "rule": "!has(self.sources) || !has(self.source) || self.source == 'synthetic'",
    "message": "set data.source or data.sources, not both",
    "fieldPath": ".sources",
}


def cel(*rules: dict[str, str]) -> dict[str, Any]:
    """json_schema_extra carrying CEL rules into the generated CRD."""
    return {"x-kubernetes-validations": list(rules)}


def warmup_problem(warmup_steps: int, steps: int) -> Problem | None:
    if warmup_steps > 0 and warmup_steps >= steps:
        return ("schedule.warmupSteps", f"{warmup_steps} must be smaller than training.steps ({steps})")
    return None


def missing_model_dims(preset: str | None, dims: dict[str, int | None], *, init: str | None = None) -> list[str]:
    """Without model.init or a preset, dim, layers and heads must be given (CEL_PRESET_OR_DIMS, in Python)."""
    if init is not None or preset is not None:
        return []
    return [name for name, value in dims.items() if value is None]


def init_conflicts(init: str | None, shape_fields: dict[str, object]) -> list[str]:
    """With model.init, the shape fields (by wire name) that are set but must not be (CEL_INIT_ALONE, in Python)."""
    if init is None:
        return []
    return [name for name in MODEL_SHAPE_FIELDS if shape_fields.get(name) is not None]


def batch_problem(global_batch_size: int, micro_batch_size: int, data_parallel: int) -> Problem | None:
    """Every data-parallel rank runs whole micro-batches: global = micro x data-parallel x accumulation steps."""
    per_step = micro_batch_size * data_parallel
    if global_batch_size % per_step:
        return (
            "training.globalBatchSize",
            f"{global_batch_size} is not a multiple of microBatchSize x data-parallel degree "
            f"({micro_batch_size} x {data_parallel} = {per_step})",
        )
    return None


def accumulation_steps(global_batch_size: int, micro_batch_size: int, data_parallel: int) -> int:
    """Micro-batches per optimizer step on each rank (call after batch_problem found nothing)."""
    return global_batch_size // (micro_batch_size * data_parallel)


def tensor_parallel_problems(dims: dict[str, int | None], tensor_parallel: int) -> list[Problem]:
    """Tensor parallelism splits heads, kv heads, the FFN and the vocabulary: each must divide evenly.

    `dims` maps spec names (heads, kvHeads, ffnDim, vocabSize) to sizes, None where not known yet. kvHeads equal
    to heads is reported once, as heads.
    """
    problems = []
    for name, size in dims.items():
        if name == "kvHeads" and size == dims.get("heads"):
            continue
        if size is not None and size % tensor_parallel:
            problems.append(("parallelism.tensorParallel", f"{tensor_parallel} does not divide model.{name} ({size})"))
    return problems


def shape_problems(shape: ModelShape) -> list[Problem]:
    """A resolved shape the model cannot be built with."""
    problems = []
    if shape.dim % shape.n_heads:
        problems.append(("model.dim", f"{shape.dim} is not divisible by model.heads {shape.n_heads}"))
    elif shape.head_dim % 2:
        problems.append(("model.dim", f"head size {shape.head_dim} must be even for RoPE"))
    if shape.n_heads % shape.n_kv_heads:
        problems.append(("model.kvHeads", f"{shape.n_kv_heads} does not divide model.heads {shape.n_heads}"))
    return problems


def describe(problems: list[Problem]) -> str:
    """'field: message; field: message' — the one line the trainer prints and the operator shows."""
    return "; ".join(f"{field}: {message}" for field, message in problems)
