"""Helpers of the Hugging Face tests: tiny transformers Llamas, and hf_worker.py scenarios under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from trainer_runs import REPO

WORKER = Path(__file__).with_name("hf_worker.py")
TIMEOUT_S = 240
VOCAB = 128
TOKENS = [[3, 17, 99, 4, 56, 1, 120, 7, 33, 64, 2, 90], [5, 5, 81, 12, 0, 127, 44, 9, 71, 18, 26, 100]]
LOGITS_ATOL = 1e-4

# GQA (4 heads, 2 kv heads), untied, rope_theta 50000, fp32
TINY_HF = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "rope_theta": 50000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
# our ModelArgs of the same shape (for models we initialise ourselves)
TINY_ARGS = {
    "dim": 64,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 2,
    "ffn_dim": 96,
    "vocab_size": VOCAB,
    "max_seq_len": 64,
    "rope_theta": 50000.0,
}

LAYOUTS = {
    # name: (processes, layout)
    "single": (1, {"dp_shard": 1}),
    "fsdp2": (2, {"dp_shard": 2, "sharding": "zero3"}),
    "zero2": (2, {"dp_shard": 2, "sharding": "zero2"}),
    "hybrid": (2, {"dp_replicate": 2, "dp_shard": 1, "sharding": "hybrid"}),
    "ddp": (2, {"dp_replicate": 2, "data_parallel": "ddp"}),
    "tp2": (2, {"tp": 2}),
    "tp2_loss_parallel": (2, {"tp": 2, "loss_parallel": True}),
    "tp2_selective_ac": (2, {"tp": 2, "ac": "selective"}),
    "tp2_full_ac": (2, {"tp": 2, "ac": "full"}),
    "fsdp2_tp2": (4, {"dp_shard": 2, "tp": 2}),
    "fsdp3_tp2": (6, {"dp_shard": 3, "tp": 2}),
}


def tiny_hf_model(path: Path, **overrides):
    """A random transformers LlamaForCausalLM (fp32), saved with save_pretrained into `path`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1234)
    model = LlamaForCausalLM(LlamaConfig(**{**TINY_HF, **overrides})).float().eval()
    # transformers initialises norms to 1 and matrices with std 0.02: spread them so differences would show
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.1 if "norm" in name else 0.05))
    model.save_pretrained(path)
    return model


def hf_logits(model, tokens=TOKENS) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits


def checkpoint_model(step_dir: Path):
    """Our model filled from a DCP checkpoint's step directory directly (the reference for exported files)."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from llmtrain_trainer.hf_checkpoint import MODEL_ARGS_FILE, model_args_from_json
    from llmtrain_trainer.model import Transformer

    model = Transformer(model_args_from_json(json.loads((step_dir / MODEL_ARGS_FILE).read_text())))
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "torch.distributed is disabled": one process is the intent
        dcp.load(state, checkpoint_id=str(step_dir), no_dist=True)
    model.load_state_dict(state["model"])
    return model.eval()


def run_scenario(scenario: str, layout: str, workdir: Path, **spec) -> dict:
    """Run hf_worker.py's scenario in `layout` (1 process, or torchrun on gloo); rank 0's results."""
    nproc, mesh = LAYOUTS[layout]
    workdir.mkdir(parents=True, exist_ok=True)
    spec = {"layout": mesh, "tokens": TOKENS, "out": str(workdir / f"{scenario}-{layout}.pt"), **spec}
    spec_path = workdir / f"{scenario}-{layout}.json"
    spec_path.write_text(json.dumps(spec, default=str))
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), scenario, str(spec_path)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        cmd += [str(WORKER), scenario, str(spec_path)]
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO / "trainer_image"), env.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
    )
    proc = subprocess.run(cmd, env=env, cwd=workdir, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return torch.load(spec["out"], weights_only=False)
