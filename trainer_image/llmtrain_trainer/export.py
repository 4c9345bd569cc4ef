"""`python -m llmtrain_trainer export --checkpoint DIR --out DIR [--config cfg.json]`: a DCP step directory of
ours -> a Hugging Face Llama directory transformers loads. Offline, one process, no process group.

The model's shape comes, in this order, from `model-args.json` in the step directory (written next to the
checkpoint, so it describes itself whatever presets become later), from `--config` (the TrainerConfig the run
used, resolved exactly as the trainer does), or from `model-args.json` in the checkpoint root. Whichever is
used is checked against the tensor shapes recorded in the checkpoint's own metadata.

Tensors are read from the checkpoint one block at a time (DCP reads only the requested items) and written to
safetensors shards as they come, so memory stays at about one block plus one shard; the optimizer state in the
checkpoint is never read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from .config import ConfigError

MODEL_PREFIX = "model."  # Checkpointer.save stores {"model": model_state_dict, "optim": ...}


def checkpoint_shapes(checkpoint: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Our parameter names -> shapes, from a DCP checkpoint's metadata (no tensor is read)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    path = Path(checkpoint)
    if not (path / ".metadata").is_file():
        raise ConfigError(f"--checkpoint: {path} is not a DCP checkpoint directory (no .metadata)")
    metadata = dcp.FileSystemReader(str(path)).read_metadata()
    return {
        key.removeprefix(MODEL_PREFIX): tuple(meta.size)
        for key, meta in metadata.state_dict_metadata.items()
        if key.startswith(MODEL_PREFIX) and isinstance(meta, TensorStorageMetadata)
    }


def resolve_checkpoint_args(checkpoint: str | os.PathLike, config: str | os.PathLike | None = None):
    """The ModelArgs of a checkpoint (see the module doc for where they come from), checked against it."""
    from .hf_checkpoint import MODEL_ARGS_FILE, model_args_from_json, parameter_shapes
    from .model import resolve_model_args

    path = Path(checkpoint)
    shapes = checkpoint_shapes(path)
    own, root = path / MODEL_ARGS_FILE, path.parent / MODEL_ARGS_FILE
    if own.is_file():
        args, source = model_args_from_json(json.loads(own.read_text())), str(own)
    elif config is not None:
        from .config import load_config

        cfg = load_config(config)
        vocab = shapes.get("tok_embeddings.weight", (None,))[0]
        if cfg.model.init is not None:  # the run's shape was its model.init's config.json, as the trainer read it
            from .hf_checkpoint import load_hf_model_args

            args = load_hf_model_args(cfg.model.init, min_seq_len=cfg.data.seq_len)
        else:
            args = resolve_model_args(cfg.model, seq_len=cfg.data.seq_len, tokenizer_vocab=vocab)
        source = str(config)
    elif root.is_file():
        args, source = model_args_from_json(json.loads(root.read_text())), str(root)
    else:
        raise ConfigError(f"--config: required ({path} has no {MODEL_ARGS_FILE} to tell the model's shape)")
    expected = parameter_shapes(args)
    if args.tie_embeddings:
        shapes.pop("output.weight", None)  # a tied model may list the shared matrix under both names
    if expected != shapes:
        diff = sorted(
            f"{name}: {shapes.get(name, 'absent')} in the checkpoint, {expected.get(name, 'absent')} from {source}"
            for name in set(expected) | set(shapes)
            if expected.get(name) != shapes.get(name)
        )
        raise ConfigError(f"the checkpoint does not hold the model {source} describes: {'; '.join(diff[:4])}")
    return args


def checkpoint_tensors(checkpoint: str | os.PathLike, args) -> Iterator[tuple[str, object]]:
    """(our name, fp32 tensor) of every parameter, read from the DCP checkpoint one block at a time."""
    import torch
    import torch.distributed.checkpoint as dcp

    from .hf_checkpoint import parameter_shapes

    groups: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, shape in parameter_shapes(args).items():
        parts = name.split(".")
        groups.setdefault(".".join(parts[:2]) if parts[0] == "layers" else parts[0], {})[name] = shape
    for shapes in groups.values():
        state = {"model": {name: torch.empty(shape, dtype=torch.float32) for name, shape in shapes.items()}}
        with warnings.catch_warnings():  # "torch.distributed is disabled ...": one process is the intent
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(state, checkpoint_id=str(checkpoint), no_dist=True)
        yield from state["model"].items()
        del state


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    config: str | os.PathLike | None = None,
    dtype=None,
    max_shard_bytes: int | None = None,
    tokenizer: str | os.PathLike | None = None,
) -> Path:
    """Export one DCP step directory of ours as a HF Llama directory; returns `out_dir`."""
    import torch

    from .hf_checkpoint import DEFAULT_MAX_SHARD_BYTES, write_hf_model

    args = resolve_checkpoint_args(checkpoint, config)
    return write_hf_model(
        checkpoint_tensors(checkpoint, args),
        out_dir,
        args,
        dtype=dtype or torch.bfloat16,
        max_shard_bytes=max_shard_bytes or DEFAULT_MAX_SHARD_BYTES,
        tokenizer=tokenizer,
    )


def _tokenizer_from_config(config: str | os.PathLike | None) -> str | None:
    """data.tokenizer 'hf:<path>' of the trainer config, when that file exists here."""
    if config is None:
        return None
    from .config import load_config

    spec = load_config(config).data.tokenizer
    path = spec.removeprefix("hf:") if spec.startswith("hf:") else None
    return path if path and Path(path).exists() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="llmtrain_trainer export",
        description="Convert a checkpoint step directory of ours into a Hugging Face Llama directory.",
    )
    parser.add_argument("--checkpoint", required=True, help="a complete checkpoint's step directory (step-N)")
    parser.add_argument("--out", required=True, help="the Hugging Face directory to write")
    parser.add_argument("--config", help="the TrainerConfig JSON of the run (when the step has no model-args.json)")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--max-shard-size", type=int, default=None, help="bytes per .safetensors file (5e9)")
    parser.add_argument("--tokenizer", help="HF tokenizer directory or tokenizer.json to copy (default: the "
                        "config's data.tokenizer when it is hf:<path>)")  # fmt: skip
    ns = parser.parse_args(argv)
    try:
        from .hf_checkpoint import parse_dtype

        out = export_checkpoint(
            ns.checkpoint,
            ns.out,
            config=ns.config,
            dtype=parse_dtype(ns.dtype),
            max_shard_bytes=ns.max_shard_size,
            tokenizer=ns.tokenizer or _tokenizer_from_config(ns.config),
        )
    except ConfigError as e:
        print(f"llmtrain export: {e}", file=sys.stderr, flush=True)
        return 78
    print(json.dumps({"event": "exported", "checkpoint": str(ns.checkpoint), "out": str(out)}), flush=True)
    return 0
