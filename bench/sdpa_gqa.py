#!/usr/bin/env python3
"""Grouped-query attention, forward + backward: SDPA's `enable_gqa` (model.attend) against repeating K and V
(the previous code), in one process; which SDPA kernel each runs and median times; one JSON line.

Default shape: llama-1b's attention (32 heads, 4 kv heads, head_dim 64, seq 2048, batch 8) in bf16 on CUDA;
on CPU (or with --smoke) a smaller fp32 one.

    PYTHONPATH=contract:trainer_image python bench/sdpa_gqa.py [--smoke]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from llmtrain_trainer.model import attend
from torch.utils._python_dispatch import TorchDispatchMode


def repeated_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The previous implementation: K and V copied for each query head of their group."""
    n_rep = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(
        q, k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1), is_causal=True
    )


class AttentionKernels(TorchDispatchMode):
    """The SDPA kernels that run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.kernels: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "scaled_dot_product" in str(func) or "repeat" in str(func):
            self.kernels.append(str(func.overloadpacket).removeprefix("aten."))
        return func(*args, **(kwargs or {}))


def fwd_bwd(fn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    fn(q, k, v).sum().backward()


def median_seconds(fn, tensors: list[torch.Tensor], repeats: int) -> float:
    sync = torch.cuda.synchronize if tensors[0].is_cuda else (lambda: None)
    times = []
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        fwd_bwd(fn, *tensors)
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="small fp32 shape (CPU)")
    ap.add_argument("--repeats", type=int, default=10)
    a = ap.parse_args()
    cuda = torch.cuda.is_available() and not a.smoke
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    batch, heads, kv_heads, seq, head_dim = (8, 32, 4, 2048, 64) if cuda else (2, 8, 2, 256, 64)
    gen = torch.Generator(device=device).manual_seed(0)
    shapes = [(batch, heads, seq, head_dim), (batch, kv_heads, seq, head_dim), (batch, kv_heads, seq, head_dim)]
    tensors = [torch.randn(s, device=device, dtype=dtype, generator=gen, requires_grad=True) for s in shapes]
    report = {"bench": "sdpa_gqa", "device": torch.cuda.get_device_name() if cuda else "cpu", "dtype": str(dtype)}
    report["shape"] = dict(batch=batch, heads=heads, kv_heads=kv_heads, seq=seq, head_dim=head_dim)
    for name, fn in (("enable_gqa", attend), ("repeat_interleave", repeated_kv)):
        with AttentionKernels() as seen:
            fwd_bwd(fn, *tensors)  # also the warm-up
        report[name] = {"kernels": seen.kernels, "fwd_bwd_ms": round(1e3 * median_seconds(fn, tensors, a.repeats), 3)}
    report["repeat_over_gqa"] = round(report["repeat_interleave"]["fwd_bwd_ms"] / report["enable_gqa"]["fwd_bwd_ms"], 3)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
