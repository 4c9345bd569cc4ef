"""A job's Hugging Face ends: start from a HF Llama (model.init), hand the trained model out (checkpoint.export).

    checked_model_args   the shape is model.init's config.json (init_model_args); its weights are found now
    build_trainer        no checkpoint of ours yet? the HF weights replace the random init (import_init_weights)
    finish               checkpoint.export: every rank gathers, rank 0 writes <checkpoint dir>/huggingface

The import happens at step 0 only: a restarted run resumes from its own checkpoints, never from model.init again.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from .config import CheckpointConfig, ConfigError, DataConfig
from .hf_checkpoint import hf_weight_files, load_hf_model_args, load_hf_weights, save_hf_model
from .log import RunLog
from .model import ModelArgs

EXPORT_DIR = "huggingface"  # under checkpoint.dir
# The export is written in the precision the run computed in (fp32 master weights, cast once)
EXPORT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def init_model_args(path: str, *, seq_len: int) -> ModelArgs:
    """model.init's shape (RoPE table at least seq_len long); the weights' files are checked now, before anything
    is built. ConfigError naming model.init when the directory is missing or is not a HF Llama."""
    from safetensors import SafetensorError

    if not Path(path).is_dir():
        raise ConfigError(f"model.init: {path} is not a directory (is its volume mounted?)")
    try:
        args = load_hf_model_args(path, min_seq_len=seq_len)
        hf_weight_files(path)
    except (ConfigError, SafetensorError) as e:
        raise ConfigError(f"model.init: {e}") from None
    return args


def import_init_weights(model: nn.Module, path: str, log: RunLog) -> None:
    """Fill the built model (any layout) with model.init's weights; each rank reads only its own shards."""
    start = time.perf_counter()
    try:
        load_hf_weights(model, path)
    except ConfigError as e:
        raise ConfigError(f"model.init: {e}") from None
    log("imported", path=path, seconds=round(time.perf_counter() - start, 3))


def export_dir(checkpoint: CheckpointConfig) -> Path | None:
    """Where checkpoint.export writes; None when there is nothing to export."""
    if checkpoint.export != "huggingface" or not checkpoint.dir:
        return None
    return Path(checkpoint.dir) / EXPORT_DIR


def export_tokenizer(data: DataConfig) -> Path | None:
    """What to copy next to the exported model: data.tokenizer 'hf:<path>' — its directory when the file is
    named tokenizer.json (tokenizer_config.json and friends come along), else the file. None for other
    tokenizers, or when the file is not there (a missing tokenizer must not fail a finished run)."""
    if not data.tokenizer.startswith("hf:"):
        return None
    file = Path(data.tokenizer.removeprefix("hf:"))
    if not file.is_file():
        return None
    return file.parent if file.name == "tokenizer.json" else file


def export_final_model(
    model: nn.Module, checkpoint: CheckpointConfig, data: DataConfig, precision: str, log: RunLog
) -> Path | None:
    """checkpoint.export: the final model as a HF Llama directory; collective (every rank calls it). Returns the
    directory (on every rank), None when the run does not export."""
    out = export_dir(checkpoint)
    if out is None:
        return None
    start = time.perf_counter()
    save_hf_model(model, out, dtype=EXPORT_DTYPES[precision], tokenizer=export_tokenizer(data))
    log("exported", path=str(out), seconds=round(time.perf_counter() - start, 3))
    return out
