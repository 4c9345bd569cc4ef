"""Admission-time memory check (issue #12, part 3): will one rank of this job fit its GPU?

Torch-free: it calls the contract's estimator with the spec's sections. The GPU's memory is not in the spec: the
controller reads it from the nodes the pods may land on (label `nvidia.com/gpu.memory`, MiB, set by GPU feature
discovery; see gpu_nodes.py) and reconcile's spec_validation_policy calls `preflight` before the job's first pods.
The estimate is validated to within 15% of measured peaks, so a job is refused only when even 85% of the estimate
exceeds the GPU ("cannot fit"); above the budget but within that margin it only warns ("may not fit").

`choose_sharding` picks an unset parallelism.sharding the other way round: zero2 (faster: no re-all-gather of
parameters in backward) only when its estimate fits even if it is 15% low, else zero3.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from llmtrain_contract.memory import MemoryEstimate, config_from_spec, explain, suggest_fit
from llmtrain_contract.sections import Sharding

from .api import LLMTrainingJobSpec, MemoryEstimateStatus
from .validate import FieldError, gpu_count, procs_per_node

TOLERANCE = 0.15  # the estimator's validated error (bench/memory_estimate.py)


def job_estimate(spec: LLMTrainingJobSpec) -> MemoryEstimate:
    """One rank's peak as the trainer will run the spec (vocabulary from the preset or a known tokenizer)."""
    return _config(spec).estimate()


def _config(spec: LLMTrainingJobSpec):
    return config_from_spec(
        spec.model,
        spec.data,
        spec.parallelism,
        spec.training,
        precision=spec.precision,
        nodes=spec.nodes,
        procs_per_node=procs_per_node(spec),
    )


def choose_sharding(spec: LLMTrainingJobSpec, gpu_memory_bytes: int | None) -> Sharding:
    """The sharding for an fsdp job that leaves it unset, chosen at admission (reconcile pins it once the first pods
    exist): zero2 when the job's pods get GPUs of a declared memory and the zero2 estimate fits it with the
    estimator's margin (estimate x (1 + TOLERANCE) <= GPU memory), else zero3. zero3 too whenever the estimate
    cannot be trusted that far: a CPU job, a custom script, a model.init shape, an unknown vocabulary (a lower
    bound), no declared memory."""
    if (
        gpu_memory_bytes is None
        or gpu_count(spec) < 1
        or spec.custom
        or spec.model.shape_on_volume
        or spec.parallelism.data_parallel != "fsdp"
    ):
        return "zero3"
    zero2 = replace(_config(spec), sharding="zero2").estimate()
    if zero2.lower_bound or zero2.total * (1 + TOLERANCE) > gpu_memory_bytes:
        return "zero3"
    return "zero2"


def memory_errors(spec: LLMTrainingJobSpec, gpu_memory_bytes: int) -> list[FieldError]:
    """An error naming the nearest fix when the job cannot fit even if the estimate is 15% high (none for a
    model.init job: its shape is on a volume the operator cannot read)."""
    if spec.model.shape_on_volume:
        return []
    cfg = _config(spec)
    est = cfg.estimate()
    if est.total * (1 - TOLERANCE) <= gpu_memory_bytes:
        return []
    fix = suggest_fit(cfg, gpu_memory_bytes)
    hint = f"; try {fix}" if fix else "; nothing in this spec alone fits: more GPUs or a smaller model"
    field = f"spec.{fix.split()[0]}" if fix else "spec.model"  # the field the fix changes
    return [FieldError(field, f"will not fit the GPU: {explain(est, gpu_memory_bytes)}{hint}")]


def memory_warning(spec: LLMTrainingJobSpec, gpu_memory_bytes: int) -> str | None:
    """Text for a Warning event when the estimate exceeds the GPU but within the estimator's error."""
    if spec.model.shape_on_volume:
        return None
    cfg = _config(spec)
    est = cfg.estimate()
    if est.fits(gpu_memory_bytes) or est.total * (1 - TOLERANCE) > gpu_memory_bytes:
        return None
    fix = suggest_fit(cfg, gpu_memory_bytes)
    return f"may not fit the GPU: {explain(est, gpu_memory_bytes)}" + (f"; consider {fix}" if fix else "")


@dataclass(frozen=True)
class Preflight:
    """The estimate for status, and what to tell the user: `error` fails the job (WillNotFit), `warning` is an
    event."""

    estimate: MemoryEstimateStatus
    error: str | None = None
    warning: str | None = None


def preflight(spec: LLMTrainingJobSpec, gpu_memory_bytes: int | None) -> Preflight | None:
    """The check for a job whose pods request GPUs (None for a CPU job: its pods get no GPU); with
    `gpu_memory_bytes` None (no node declares it) only the estimate, nothing is checked. A custom script's model is
    unknown to the operator: None (its resources are still checked by the scheduler and Kueue)."""
    if gpu_count(spec) < 1 or spec.custom or spec.model.shape_on_volume:
        return None  # (model.init: the shape is in a config.json on a volume the operator cannot read)
    est = job_estimate(spec)
    status = MemoryEstimateStatus(peak_bytes=est.total, summary=est.summary(), gpu_memory_bytes=gpu_memory_bytes)
    if gpu_memory_bytes is None:
        return Preflight(status)
    errors = memory_errors(spec, gpu_memory_bytes)
    if errors:
        return Preflight(status, error=f"{errors[0]}; estimate: {est.summary()}")
    return Preflight(status, warning=memory_warning(spec, gpu_memory_bytes))
