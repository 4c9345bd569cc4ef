"""Prometheus metrics and MFU.

Each node's local rank 0 serves http://$POD_IP:<port>/metrics. Global rank 0 (local rank 0 of node 0) also
exports the job's training metrics (loss all-reduced over data-parallel ranks); the other nodes export only
their own memory. Every sample carries the labels job and node_rank.
"""

from __future__ import annotations

import os
import re
import resource

import torch
from llmtrain_contract import metrics as names
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Dense (no sparsity) bf16 peak FLOP/s per device, matched against torch.cuda.get_device_name(). A key matches as
# whole words (so "H20" is not "H200", "L4" not "L40S", "A10" not "A100"); the first match wins, so the variants
# that share a chip name but not its clocks or power come before it: H200 NVL (the PCIe card, 600 W) before
# H200 (SXM, 700 W); H100 PCIe and NVL before H100 (SXM, whose name is e.g. "NVIDIA H100 80GB HBM3").
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("GB200", 2.5e15),
    ("B200", 2.25e15),
    ("GH200", 989e12),
    ("H200 NVL", 835e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H800 PCIe", 756e12),
    ("H800", 989e12),
    ("H20", 148e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("MI300X", 1307e12),
    ("MI250X", 383e12),
]


def peak_flops(device_name: str | None, override: float | None) -> float | None:
    """Peak FLOP/s of one device; None when unknown (CPU, unlisted GPU): MFU is then not reported."""
    if override:
        return override
    if not device_name:
        return None
    return next((value for key, value in PEAK_BF16_FLOPS if _names_device(key, device_name)), None)


def _names_device(key: str, device_name: str) -> bool:
    """Whether `key` appears in the device name as whole words (case-insensitive)."""
    return re.search(rf"(?<![a-z0-9]){re.escape(key.lower())}(?![a-z0-9])", device_name.lower()) is not None


def mfu(tokens_per_second_per_device: float, flops_per_token: float, peak: float | None) -> float | None:
    return tokens_per_second_per_device * flops_per_token / peak if peak else None


class Metrics:
    """The trainer's gauges; a no-op holder on ranks that serve nothing."""

    def __init__(self, *, job: str, node_rank: int, port: int, serve: bool, training: bool):
        self.enabled = serve and port > 0
        self.training = training and self.enabled
        self.registry = CollectorRegistry()
        self.server = None
        if not self.enabled:
            return
        labels = list(names.LABELS)
        self._labels = {"job": job, "node_rank": str(node_rank)}
        r = self.registry

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, [*labels, *extra], registry=r)

        self.gpu_memory = gauge(names.GPU_MEMORY_BYTES, "GPU memory of this node's local rank 0.", ("kind",))
        self.host_memory = gauge(names.HOST_MEMORY_BYTES, "Host memory of this node's local rank 0.", ("kind",))
        if self.training:
            self.step = gauge(names.STEP, "Optimizer steps done.")
            self.total_steps = gauge(names.TOTAL_STEPS, "Optimizer steps the job will run.")
            self.loss = gauge(names.LOSS, "Training loss of the last step, averaged over data-parallel ranks.")
            self.tokens = Counter(names.TOKENS, "Tokens trained on (all ranks).", labels, registry=r)
            self.tokens_per_second = gauge(names.TOKENS_PER_SECOND, "Job-wide training throughput.")
            self.mfu = gauge(names.MFU, "Model FLOPs utilisation, 0..1 (NaN where the peak is unknown).")
            self.flops = gauge(names.FLOPS_PER_SECOND, "Achieved model FLOP/s, job-wide.")
            self.step_seconds = Histogram(
                names.STEP_SECONDS,
                "Wall time of one optimizer step.",
                labels,
                registry=r,
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            )
            self.grad_norm = gauge(names.GRAD_NORM, "Global gradient norm before clipping.")
            self.lr = gauge(names.LEARNING_RATE, "Learning rate of the last step.")
            self.loss_scale = gauge(names.LOSS_SCALE, "fp16 dynamic loss scale (1 for bf16/fp32).")
            self.skipped = Counter(names.SKIPPED_STEPS, "Steps skipped for non-finite gradients.", labels, registry=r)
            self.ckpt_seconds = gauge(names.CHECKPOINT_SECONDS, "Duration of the last checkpoint save.")
            self.last_ckpt = gauge(names.LAST_CHECKPOINT_STEP, "Step of the newest complete checkpoint.")
            self.eval_loss = gauge(names.EVAL_LOSS, "Validation loss of the last evaluation (evaluation.source).")
            self.eval_ppl = gauge(names.EVAL_PERPLEXITY, "Validation perplexity, exp(llmtrain_eval_loss).")
            self.eval_step = gauge(names.EVAL_STEP, "Optimizer step of the last evaluation.")
            for counter in (self.tokens, self.skipped):  # export 0 before the first increment
                self._labelled(counter)
        addr = os.environ.get("POD_IP") or "0.0.0.0"
        self.server, _ = start_http_server(port, addr=addr, registry=r)

    def _labelled(self, metric):  # the child carrying this node's job and node_rank labels
        return metric.labels(**self._labels)

    def record_step(
        self,
        *,
        step: int,
        total: int,
        loss: float,
        tokens: int,
        seconds: float,
        grad_norm: float,
        lr: float,
        loss_scale: float,
        skipped: bool,
        flops_per_token: float,
        peak: float | None,
        world_size: int,
    ) -> None:
        if not self.training:
            return
        tps = tokens / seconds if seconds > 0 else 0.0
        self._labelled(self.step).set(step)
        self._labelled(self.total_steps).set(total)
        self._labelled(self.loss).set(loss)
        self._labelled(self.tokens).inc(tokens)
        self._labelled(self.tokens_per_second).set(tps)
        self._labelled(self.flops).set(tps * flops_per_token)
        value = mfu(tps / world_size, flops_per_token, peak)
        self._labelled(self.mfu).set(float("nan") if value is None else value)
        self._labelled(self.step_seconds).observe(seconds)
        self._labelled(self.grad_norm).set(grad_norm)
        self._labelled(self.lr).set(lr)
        self._labelled(self.loss_scale).set(loss_scale)
        if skipped:
            self._labelled(self.skipped).inc()

    def record_checkpoint(self, step: int, seconds: float) -> None:
        if self.training:
            self._labelled(self.ckpt_seconds).set(seconds)
            self._labelled(self.last_ckpt).set(step)

    def record_eval(self, step: int, loss: float, perplexity: float) -> None:
        """The validation series appear only after the first evaluation (no sample before: no misleading 0)."""
        if self.training:
            self._labelled(self.eval_loss).set(loss)
            self._labelled(self.eval_ppl).set(perplexity)
            self._labelled(self.eval_step).set(step)

    def record_memory(self) -> None:
        if not self.enabled:
            return
        for kind, value in memory_stats().items():
            if kind.startswith("host_"):
                self.host_memory.labels(kind=kind.removeprefix("host_"), **self._labels).set(value)
            else:
                self.gpu_memory.labels(kind=kind, **self._labels).set(value)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def memory_stats() -> dict[str, float]:
    """GPU memory (allocated, reserved, peak) of this process' device and host peak RSS, in bytes."""
    stats = {"host_peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        stats["allocated"] = float(torch.cuda.memory_allocated())
        stats["reserved"] = float(torch.cuda.memory_reserved())
        stats["peak_allocated"] = float(torch.cuda.max_memory_allocated())
    return stats
