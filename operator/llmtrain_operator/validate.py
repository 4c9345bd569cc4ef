"""Semantic checks the CRD schema cannot express; each error names the spec field the user must change.

The API server already enforces types, ranges and the CEL rules in api.py. What is left depends on values it cannot
see (the GPU count behind procsPerNode 'auto') or on arithmetic across sections; a job failing here is marked Failed
with reason InvalidSpec and gets no pods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmtrain_contract.presets import resolved_fields, tensor_parallel_dims
from llmtrain_contract.rules import Problem, batch_problem, tensor_parallel_problems
from pydantic import ValidationError

from .api import LLMTrainingJobSpec
from .constants import (
    GPU_RESOURCE,
    OWNED_ANNOTATIONS,
    OWNED_ENV,
    OWNED_LABEL_PREFIX,
    OWNED_LABELS,
    OWNED_MOUNT_PATHS,
    OWNED_VOLUMES,
)


@dataclass(frozen=True)
class FieldError:
    """One problem with the spec: `field` is the dotted path as the user wrote it (spec.training.globalBatchSize)."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def parse_spec(raw: dict[str, Any]) -> tuple[LLMTrainingJobSpec | None, list[FieldError]]:
    """Parse a stored spec; a schema the API server let through should parse, but an old CRD might not."""
    try:
        return LLMTrainingJobSpec.model_validate(raw), []
    except ValidationError as e:
        errors = [
            FieldError("spec." + ".".join(str(p) for p in err["loc"]) if err["loc"] else "spec", err["msg"])
            for err in e.errors()
        ]
        return None, errors


def gpu_count(spec: LLMTrainingJobSpec) -> int:
    """GPUs per node pod: the limit, else the request (Kubernetes requires them equal for extended resources)."""
    raw = spec.resources.limits.get(GPU_RESOURCE, spec.resources.requests.get(GPU_RESOURCE, 0))
    try:
        return int(raw)
    except (TypeError, ValueError):
        return 0


def procs_per_node(spec: LLMTrainingJobSpec) -> int:
    """Resolve 'auto' to the pod's GPU count (1 on CPU)."""
    if spec.procs_per_node == "auto":
        return max(gpu_count(spec), 1)
    return int(spec.procs_per_node)


def data_parallel_degree(spec: LLMTrainingJobSpec) -> int:
    return spec.nodes * procs_per_node(spec) // spec.parallelism.tensor_parallel


def validate_spec(spec: LLMTrainingJobSpec) -> list[FieldError]:
    """Every semantic problem at once, so the user fixes them in one round."""
    if spec.custom:  # the model, batch and layout are the script's business: only what the pods need is checked
        return [*_resources(spec), *pod_template_conflicts(spec), *_custom_env_conflicts(spec)]
    return [*_resources(spec), *_parallelism(spec), *_batch(spec), *pod_template_conflicts(spec)]


def _custom_env_conflicts(spec: LLMTrainingJobSpec) -> list[FieldError]:
    """trainer.env may add variables, never replace the ones torchrun and the contract depend on."""
    errors = []
    for i, env in enumerate(spec.trainer.env if spec.trainer else []):
        if "name" not in env:
            errors.append(FieldError(f"spec.trainer.env[{i}].name", "is required"))
        elif env["name"] in OWNED_ENV:
            errors.append(FieldError(f"spec.trainer.env[{i}].name", f"{env['name']} is set by the operator"))
    return errors


def _resources(spec: LLMTrainingJobSpec) -> list[FieldError]:
    errors = []
    for section, values in (("requests", spec.resources.requests), ("limits", spec.resources.limits)):
        raw = values.get(GPU_RESOURCE)
        if raw is not None and not (str(raw).isdigit() and int(raw) > 0):
            errors.append(
                FieldError(f"spec.resources.{section}.{GPU_RESOURCE}", f"must be a whole number, got {raw!r}")
            )
    req, lim = spec.resources.requests.get(GPU_RESOURCE), spec.resources.limits.get(GPU_RESOURCE)
    if req is not None and lim is not None and str(req) != str(lim):
        errors.append(FieldError(f"spec.resources.requests.{GPU_RESOURCE}", f"must equal the limit ({lim}), got {req}"))
    gpus = gpu_count(spec)
    if gpus and spec.procs_per_node != "auto" and int(spec.procs_per_node) > gpus:
        errors.append(FieldError("spec.procsPerNode", f"{spec.procs_per_node} processes but only {gpus} GPUs per node"))
    return errors


def _spec_errors(problems: list[Problem]) -> list[FieldError]:
    return [FieldError(f"spec.{field}", message) for field, message in problems]


def _parallelism(spec: LLMTrainingJobSpec) -> list[FieldError]:
    tp, procs = spec.parallelism.tensor_parallel, procs_per_node(spec)
    errors = []
    if procs % tp:
        errors.append(
            FieldError("spec.parallelism.tensorParallel", f"{tp} does not divide the {procs} processes per node")
        )
    # The shape as the trainer will resolve it; the vocabulary may still come from the tokenizer (unknown here).
    assert spec.model is not None  # the built-in trainer's (the spec's validator requires it)
    # With model.init every size is unknown here (its config.json is on a volume): the trainer checks them.
    shape = resolved_fields(spec.model, seq_len=spec.data.seq_len, tokenizer_vocab=None)
    return errors + _spec_errors(tensor_parallel_problems(tensor_parallel_dims(shape), tp))


def _batch(spec: LLMTrainingJobSpec) -> list[FieldError]:
    if procs_per_node(spec) % spec.parallelism.tensor_parallel:
        return []  # reported by _parallelism; the degree below would be meaningless
    training = spec.training
    assert training is not None  # the built-in trainer's (the spec's validator requires it)
    problem = batch_problem(training.global_batch_size, training.micro_batch_size, data_parallel_degree(spec))
    return _spec_errors([problem] if problem else [])


def pod_template_conflicts(spec: LLMTrainingJobSpec) -> list[FieldError]:
    """podTemplate may add to a node pod but never replace what the operator owns."""
    tpl, errors = spec.pod_template, []
    for key in tpl.labels:
        if key.startswith(OWNED_LABEL_PREFIX) or key in OWNED_LABELS:
            errors.append(FieldError(f"spec.podTemplate.labels.{key}", "is set by the operator"))
    for key in tpl.annotations:
        if key.startswith(OWNED_LABEL_PREFIX) or key in OWNED_ANNOTATIONS:
            errors.append(FieldError(f"spec.podTemplate.annotations.{key}", "is reserved for the operator"))
    for i, env in enumerate(tpl.env):
        if "name" not in env:
            errors.append(FieldError(f"spec.podTemplate.env[{i}].name", "is required"))
        elif env["name"] in OWNED_ENV:
            errors.append(FieldError(f"spec.podTemplate.env[{i}].name", f"{env['name']} is set by the operator"))
    for i, vol in enumerate(tpl.volumes):
        if "name" not in vol:
            errors.append(FieldError(f"spec.podTemplate.volumes[{i}].name", "is required"))
        elif vol["name"] in OWNED_VOLUMES:
            errors.append(FieldError(f"spec.podTemplate.volumes[{i}].name", f"{vol['name']} is an operator volume"))
    for i, mount in enumerate(tpl.volume_mounts):
        if mount.get("name") in OWNED_VOLUMES:
            errors.append(
                FieldError(f"spec.podTemplate.volumeMounts[{i}].name", f"{mount['name']} is an operator volume")
            )
        path = str(mount.get("mountPath", "")).rstrip("/")
        if any(path == owned or path.startswith(owned + "/") for owned in OWNED_MOUNT_PATHS):
            errors.append(
                FieldError(f"spec.podTemplate.volumeMounts[{i}].mountPath", f"{path} is mounted by the operator")
            )
    return errors
