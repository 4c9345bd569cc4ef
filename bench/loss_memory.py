#!/usr/bin/env python3
"""Peak host memory and time of the training loss (final norm -> output projection -> fp32 cross-entropy, forward
and backward) on CPU: the plain loss on full logits against loss.py's fused, chunked one; one JSON.

Each variant runs in its own fresh process, so `ru_maxrss` (the process' peak resident set) belongs to it alone;
the report gives how far one forward + backward raises it above what the inputs (hidden states, norm and
projection weights) already hold. (torch's MemTracker cannot follow the chunked loss: it refuses modules called
more than once per iteration.) Default shape: 4 x 1024 tokens, dim 512, a 32 000-word vocabulary.

    PYTHONPATH=contract:trainer_image python bench/loss_memory.py --out /tmp/loss_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("plain", "chunked")


def loss_fn(variant: str, chunk_tokens: int):
    """The loss of (hidden, targets, norm, output) for a variant: the old trainer path or loss.py's fused one."""
    from llmtrain_trainer.loss import cross_entropy, linear_cross_entropy

    if variant == "plain":
        return lambda hidden, targets, norm, output: cross_entropy(output(norm(hidden)), targets)
    return lambda hidden, targets, norm, output: linear_cross_entropy(
        norm(hidden), output.weight, targets, chunk_tokens
    )


def inputs(a: argparse.Namespace):
    """Hidden states (requiring grad, as the last block's output does), targets, the final norm and projection."""
    import torch
    from llmtrain_trainer.model import RMSNorm

    torch.manual_seed(0)
    hidden = torch.randn(a.batch, a.seq, a.dim, requires_grad=True)
    targets = torch.randint(0, a.vocab, (a.batch, a.seq))
    return hidden, targets, RMSNorm(a.dim, 1e-5), torch.nn.Linear(a.dim, a.vocab, bias=False)


def measure_variant(a: argparse.Namespace) -> dict:
    """In this process: how far one forward + backward raises the peak RSS, then the median time of a few."""
    import torch

    torch.set_num_threads(a.threads)
    hidden, targets, norm, output = inputs(a)
    loss = loss_fn(a.variant, a.chunk_tokens)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    loss(hidden, targets, norm, output).backward()
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    times = []
    for _ in range(a.repeats):
        hidden.grad = None
        started = time.perf_counter()
        loss(hidden, targets, norm, output).backward()
        times.append(time.perf_counter() - started)
    return {"rss_peak_MiB": round(rss_peak / 2**20, 1), "fwd_bwd_s": round(statistics.median(times), 4)}


def run_variant(a: argparse.Namespace, variant: str) -> dict:
    """The variant in a fresh process (this script with --variant)."""
    args = [sys.executable, __file__, "--variant", variant, *_shape_args(a)]
    # a fixed mmap threshold: every large tensor is its own mapping, returned to the system when freed
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run(args, capture_output=True, text=True, check=True, env=env)
    return json.loads(proc.stdout.splitlines()[-1])


def _shape_args(a: argparse.Namespace) -> list[str]:
    names = ("batch", "seq", "dim", "vocab", "chunk_tokens", "repeats", "threads")
    return [f"--{name.replace('_', '-')}={getattr(a, name)}" for name in names]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--chunk-tokens", type=int, help="tokens per chunk (default: loss.chunk_tokens_for(vocab))")
    ap.add_argument("--repeats", type=int, default=3, help="timed forward + backward passes")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: measure one, print JSON
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if a.chunk_tokens is None:
        from llmtrain_trainer.loss import chunk_tokens_for

        a.chunk_tokens = chunk_tokens_for(a.vocab)
    if a.variant:
        print(json.dumps(measure_variant(a)))
        return
    shape = {name: getattr(a, name) for name in ("batch", "seq", "dim", "vocab", "chunk_tokens", "threads")}
    full_logits_MiB = round(a.batch * a.seq * a.vocab * 4 / 2**20, 1)
    report = {"bench": "loss_memory", **shape, "fp32_logits_MiB": full_logits_MiB}
    report["variants"] = {variant: run_variant(a, variant) for variant in VARIANTS}
    text = json.dumps(report, indent=1)
    if a.out:
        a.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
