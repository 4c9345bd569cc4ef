"""Admission-time memory check (issue #12, part 3): will one rank of this job fit its GPU?

Torch-free: it calls the contract's estimator with the spec's sections. The GPU's memory is not in the spec, so
the caller passes it (an operator setting, or the node's `nvidia.com/gpu.memory` label from GPU feature discovery,
in MiB). The estimate is validated to within 15% of measured peaks, so a job is refused only when even 85% of the
estimate exceeds the GPU ("cannot fit"); above the budget but within that margin it only warns ("may not fit").

Hook (not wired here: reconcile.py and main.py are being changed by others): reconcile.reconcile() is pure, so the
GPU memory comes from the operator's settings, e.g. `OperatorSettings.gpu_memory_bytes` set by main.py from
`LLMTRAIN_GPU_MEMORY_GIB`; then, where reconcile() calls `validate_spec(spec)`:
    errors = validate_spec(spec)
    if not errors and settings.gpu_memory_bytes:
        errors = memory_errors(spec, settings.gpu_memory_bytes)
and, when `memory_warning(spec, settings.gpu_memory_bytes)` returns text, a Warning event on the job.
"""

from __future__ import annotations

from llmtrain_contract.memory import MemoryEstimate, config_from_spec, explain, suggest_fit

from .api import LLMTrainingJobSpec
from .validate import FieldError, procs_per_node

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
