#!/usr/bin/env python3
"""Our train step against Hugging Face's LlamaForCausalLM of the same shape, on CPU, in one process; one JSON.

Both sides do the same work per step: forward on (batch, seq) tokens, mean next-token cross-entropy, backward,
gradient clipping to 1.0, a foreach AdamW step and zero_grad, in fp32. Ours goes through the trainer's own loss
function (step.micro_batch_loss) and optimizer builder, so the script measures whatever the checkout does. The
two are timed in interleaved rounds (ours, HF, ours, HF, ...) so background load on a shared machine hits both
alike; the report gives per-round medians and `hf_over_ours` (> 1: ours is faster).

    PYTHONPATH=contract:trainer_image python bench/cpu_vs_hf.py --out /tmp/cpu_vs_hf.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

SHAPES = {  # GQA (kv heads < heads), untied embeddings, like llama-1b
    "tiny": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, vocab_size=512, seq=64, batch=4),
    "25m": dict(dim=384, n_layers=8, n_heads=6, n_kv_heads=2, ffn_dim=1024, vocab_size=16384, seq=128, batch=4),
}


def our_step(shape: dict) -> tuple[Callable[[torch.Tensor], float], int]:
    """One training step of our Transformer via the trainer's loss and optimizer; and its parameter count."""
    from llmtrain_contract.sections import OptimizerSection
    from llmtrain_trainer.model import ModelArgs, Transformer
    from llmtrain_trainer.optim import build_optimizer, clip_grad_norm
    from llmtrain_trainer.step import micro_batch_loss

    fields = {k: v for k, v in shape.items() if k not in ("seq", "batch")}
    model = Transformer(ModelArgs(**fields, max_seq_len=shape["seq"], tie_embeddings=False))
    model.init_weights(seed=0)
    optimizer = build_optimizer(model, OptimizerSection(), "cpu")
    params = list(model.parameters())

    def step(tokens: torch.Tensor) -> float:
        loss = micro_batch_loss(model, tokens[:, :-1], tokens[:, 1:], None)
        loss.backward()
        clip_grad_norm(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step, sum(p.numel() for p in params)


def hf_step(shape: dict) -> tuple[Callable[[torch.Tensor], float], int]:
    """The same step with transformers (SDPA attention, labels shifted inside the model)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=shape["dim"],
        num_hidden_layers=shape["n_layers"],
        num_attention_heads=shape["n_heads"],
        num_key_value_heads=shape["n_kv_heads"],
        intermediate_size=shape["ffn_dim"],
        vocab_size=shape["vocab_size"],
        max_position_embeddings=shape["seq"] + 1,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(config).float()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, foreach=True)

    def step(tokens: torch.Tensor) -> float:
        loss = model(input_ids=tokens, labels=tokens).loss  # seq + 1 inputs: seq predicted positions, as ours
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step, sum(p.numel() for p in model.parameters())


def time_steps(step: Callable[[torch.Tensor], float], tokens: torch.Tensor, steps: int) -> float:
    """Median seconds of `steps` steps."""
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step(tokens)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def compare(name: str, rounds: int, steps: int) -> dict:
    """Interleaved rounds of ours and HF on one shape; medians of the rounds' medians."""
    shape = SHAPES[name]
    torch.manual_seed(0)
    tokens = torch.randint(0, shape["vocab_size"], (shape["batch"], shape["seq"] + 1))
    ours, our_params = our_step(shape)
    hf, hf_params = hf_step(shape)
    for step in (ours, hf):  # warm-up: allocator, lazy inits
        time_steps(step, tokens, 2)
    our_times, hf_times = [], []
    for _ in range(rounds):
        our_times.append(time_steps(ours, tokens, steps))
        hf_times.append(time_steps(hf, tokens, steps))
    ours_s, hf_s = statistics.median(our_times), statistics.median(hf_times)
    tokens_per_step = shape["batch"] * shape["seq"]
    return {
        "shape": name,
        **shape,
        "params_M": {"ours": round(our_params / 1e6, 3), "hf": round(hf_params / 1e6, 3)},
        "step_s": {"ours": round(ours_s, 5), "hf": round(hf_s, 5)},
        "step_s_rounds": {"ours": [round(t, 5) for t in our_times], "hf": [round(t, 5) for t in hf_times]},
        "tokens_per_s": {"ours": round(tokens_per_step / ours_s, 1), "hf": round(tokens_per_step / hf_s, 1)},
        "hf_over_ours": round(hf_s / ours_s, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES))
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (ours then HF)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round and side")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: steadier on shared CPUs)")
    ap.add_argument("--label", default="", help="free text stored in the JSON (e.g. the commit)")
    ap.add_argument("--out", type=Path, help="write the JSON here too")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    report = {
        "bench": "cpu_vs_hf",
        "label": a.label,
        "torch": torch.__version__,
        "threads": a.threads,
        "results": [compare(name, a.rounds, a.steps) for name in a.shapes],
    }
    text = json.dumps(report, indent=1)
    if a.out:
        a.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
