"""What a user does with the job's result: load the exported directory with transformers (model and tokenizer),
measure its loss on the held-out shards beside the model the job started from, and generate. Prints one JSON line."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def held_out_windows(shards: Path, seq_len: int) -> torch.Tensor:
    """Every whole (seq_len + 1)-token window of the prepared held-out shards, read with their recorded dtype."""
    manifest = json.loads((shards / "manifest.json").read_text())
    tokens = np.concatenate(
        [np.fromfile(shards / s["file"], dtype=np.dtype(s["dtype"]).newbyteorder("<")) for s in manifest["shards"]]
    )
    windows = len(tokens) // (seq_len + 1)
    return torch.from_numpy(tokens[: windows * (seq_len + 1)].astype(np.int64)).view(windows, seq_len + 1)


@torch.no_grad()
def mean_loss(model: torch.nn.Module, windows: torch.Tensor) -> float:
    losses = [model(input_ids=w[None, :-1], labels=w[None, :-1]).loss for w in windows]
    return float(torch.stack(losses).mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--export", type=Path, required=True)
    parser.add_argument("--initial", type=Path, required=True)
    parser.add_argument("--held-out", type=Path, required=True)
    parser.add_argument("--seq-len", type=int, default=64)
    args = parser.parse_args()
    exported = AutoModelForCausalLM.from_pretrained(args.export, dtype=torch.float32).eval()
    initial = AutoModelForCausalLM.from_pretrained(args.initial, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.export)
    windows = held_out_windows(args.held_out, args.seq_len)
    prompt = tokenizer("And God said", return_tensors="pt")
    generated = exported.generate(**prompt, max_new_tokens=12, do_sample=False)
    result = {
        "architecture": exported.config.architectures,
        "windows": len(windows),
        "exportedLoss": mean_loss(exported, windows),
        "initialLoss": mean_loss(initial, windows),
        "uniformLoss": math.log(exported.config.vocab_size),
        "generated": tokenizer.decode(generated[0]),
        "newTokens": int(generated.shape[1] - prompt["input_ids"].shape[1]),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
