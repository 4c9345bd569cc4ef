"""Hugging Face Llama checkpoints: import into any parallel layout, export a directory transformers loads.

Three layers, each usable alone:

- pure mappings: HF `config.json` <-> ModelArgs, HF tensor names <-> ours, and the per-head row permutation of
  wq/wk between HF's rotate-half RoPE layout (channel i pairs with i + head_dim/2) and ours (2i pairs with 2i+1);
- `fill_parameters`: fill a parallelised, materialised model (plain, DDP, FSDP2 zero2/zero3/hybrid, TP, FSDP x TP)
  from full values given one parameter at a time; each rank copies only its own shard, with no collective;
- `load_hf_weights` (import, streaming one tensor at a time with safetensors.safe_open) and `save_hf_model` /
  `write_hf_model` (export: config.json, generation_config.json, model.safetensors or shards + index).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from .config import ConfigError
from .model import ModelArgs, RopeScaling, validate_model_args

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
MODEL_ARGS_FILE = "model-args.json"  # our ModelArgs, written next to a DCP checkpoint so it describes itself
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # transformers' default max_shard_size, "5GB"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)
# tensors some older checkpoints carry that are not weights (recomputed by every implementation)
_IGNORED_HF_KEYS = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# ---------------------------------------------------------------------------------------------- config mapping


def _rope_from_hf(hf: dict) -> tuple[float, RopeScaling | None]:
    """(rope_theta, scaling) from transformers 4's `rope_theta` + `rope_scaling` or 5's `rope_parameters`."""
    params = hf.get("rope_parameters")
    key = "rope_parameters"
    if params is None:
        params, key = hf.get("rope_scaling"), "rope_scaling"
    theta = hf.get("rope_theta")
    if params is not None and not isinstance(params, dict):
        raise ConfigError(f"{key}: expected an object, got {params!r}")
    params = dict(params or {})
    theta = params.get("rope_theta", theta)
    theta = 10000.0 if theta is None else float(theta)
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise ConfigError(f"{key}.rope_type: {rope_type!r} is not supported (only 'default' and 'llama3')")
    try:
        scaling = RopeScaling(
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(
                params.get("original_max_position_embeddings") or hf["max_position_embeddings"]
            ),
        )
    except KeyError as e:
        raise ConfigError(f"{key}.{e.args[0]}: required for rope_type 'llama3'") from None
    if scaling.high_freq_factor == scaling.low_freq_factor:
        raise ConfigError(f"{key}.high_freq_factor: must differ from low_freq_factor")
    return theta, scaling


def model_args_from_hf_config(hf: dict) -> ModelArgs:
    """ModelArgs of a Hugging Face Llama `config.json` (as a dict); ConfigError naming the key it cannot take."""
    model_type = hf.get("model_type")
    if model_type != "llama":
        raise ConfigError(f"model_type: {model_type!r} is not supported (only 'llama')")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise ConfigError(f"{key}: biases are not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"hidden_act: {hf['hidden_act']!r} is not supported (only 'silu')")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        if not isinstance(hf.get(key), int) or hf[key] <= 0:
            raise ConfigError(f"{key}: required, a positive integer (got {hf.get(key)!r})")
    dim, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim")
    if head_dim is not None and head_dim * n_heads != dim:
        raise ConfigError(f"head_dim: {head_dim} x num_attention_heads {n_heads} != hidden_size {dim}")
    theta, scaling = _rope_from_hf(hf)
    args = ModelArgs(
        dim=dim,
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        ffn_dim=hf["intermediate_size"],
        vocab_size=hf["vocab_size"],
        max_seq_len=int(hf.get("max_position_embeddings", 2048)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        rope_theta=theta,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),  # LlamaConfig's default
        rope_scaling=scaling,
    )
    problems = validate_model_args(args)
    if problems:
        raise ConfigError("; ".join(problems))
    return args


def hf_config_from_model_args(
    args: ModelArgs,
    *,
    dtype: torch.dtype = torch.bfloat16,
    bos_token_id: int | None = None,
    eos_token_id: int | list[int] | None = None,
) -> dict:
    """A LlamaForCausalLM `config.json` (legacy `rope_theta`/`rope_scaling` keys, as Llama 3.1 ships them, which
    transformers 4 reads as they are and 5 converts to its `rope_parameters`)."""
    dtype_name = str(dtype).removeprefix("torch.")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": args.dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads,
        "head_dim": args.head_dim,
        "intermediate_size": args.ffn_dim,
        "vocab_size": args.vocab_size,
        "max_position_embeddings": args.max_seq_len,
        "rope_theta": args.rope_theta,
        "rope_scaling": None,
        "rms_norm_eps": args.norm_eps,
        "tie_word_embeddings": args.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "torch_dtype": dtype_name,  # transformers 4
        "dtype": dtype_name,  # transformers 5
    }
    if args.rope_scaling is not None:
        config["rope_scaling"] = {"rope_type": "llama3", **asdict(args.rope_scaling)}
    return config


def check_same_model(ours: ModelArgs, hf: ModelArgs) -> None:
    """The model being filled computes what the HF model does (the context length may differ: it only sizes
    the RoPE table); ConfigError naming the HF key otherwise."""
    fields = {
        "dim": "hidden_size",
        "n_layers": "num_hidden_layers",
        "n_heads": "num_attention_heads",
        "n_kv_heads": "num_key_value_heads",
        "ffn_dim": "intermediate_size",
        "vocab_size": "vocab_size",
        "tie_embeddings": "tie_word_embeddings",
        "rope_theta": "rope_theta",
        "norm_eps": "rms_norm_eps",
        "rope_scaling": "rope_scaling",
    }
    for field, key in fields.items():
        mine, theirs = getattr(ours, field), getattr(hf, field)
        if mine != theirs:
            raise ConfigError(f"{key}: the checkpoint has {theirs!r}, the model being filled {mine!r}")


def read_hf_config(path: str | os.PathLike) -> dict:
    file = Path(path) / CONFIG_FILE
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{file}: not found (not a Hugging Face model directory?)") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{file}: not JSON ({e})") from None


def load_hf_model_args(path: str | os.PathLike, *, min_seq_len: int = 0) -> ModelArgs:
    """ModelArgs of the HF directory at `path`, with a RoPE table at least `min_seq_len` long."""
    args = model_args_from_hf_config(read_hf_config(path))
    return replace(args, max_seq_len=max(args.max_seq_len, min_seq_len))


def model_args_to_json(args: ModelArgs) -> dict:
    return asdict(args)


def model_args_from_json(data: dict) -> ModelArgs:
    data = dict(data)
    if data.get("rope_scaling") is not None:
        data["rope_scaling"] = RopeScaling(**data["rope_scaling"])
    return ModelArgs(**data)


def write_model_args(directory: str | os.PathLike, args: ModelArgs) -> Path:
    """Write `model-args.json` (ModelArgs as JSON) into `directory`, e.g. a checkpoint's step directory."""
    path = Path(directory) / MODEL_ARGS_FILE
    path.write_text(json.dumps(model_args_to_json(args), indent=2) + "\n")
    return path


# --------------------------------------------------------------------------------------------- weight mapping

_LAYER_MAP = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_LAYER_MAP_BACK = {hf: ours for ours, hf in _LAYER_MAP.items()}
_TOP_MAP = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
_TOP_MAP.update({"output.weight": "lm_head.weight"})
_TOP_MAP_BACK = {hf: ours for ours, hf in _TOP_MAP.items()}
_OUR_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def hf_name(name: str) -> str:
    """Our parameter name -> the HF Llama tensor name (KeyError for a name that has none)."""
    m = _OUR_LAYER.match(name)
    if m:
        return f"model.layers.{m.group(1)}.{_LAYER_MAP[m.group(2)]}"
    return _TOP_MAP[name]


def our_name(name: str) -> str:
    """HF Llama tensor name -> our parameter name (KeyError for a name that has none)."""
    m = _HF_LAYER.match(name)
    if m:
        return f"layers.{m.group(1)}.{_LAYER_MAP_BACK[m.group(2)]}"
    return _TOP_MAP_BACK[name]


def permute_from_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of HF's q_proj/k_proj (per head: first halves, then second halves of the rotated pairs) -> ours
    (per head: pairs interleaved). Row 2i of a head is HF's row i, row 2i+1 is HF's row i + head_dim/2."""
    out_dim, in_dim = w.shape
    half = out_dim // n_heads // 2
    return w.reshape(n_heads, 2, half, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def permute_to_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of permute_from_hf (Meta's own `permute` in transformers' convert_llama_weights_to_hf)."""
    out_dim, in_dim = w.shape
    half = out_dim // n_heads // 2
    return w.reshape(n_heads, half, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def _heads_of(name: str, args: ModelArgs) -> int | None:
    if name.endswith("attention.wq.weight"):
        return args.n_heads
    if name.endswith("attention.wk.weight"):
        return args.n_kv_heads
    return None


def from_hf_tensor(name: str, w: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    """HF's value of our parameter `name` (q/k rows permuted to our RoPE layout; others unchanged)."""
    heads = _heads_of(name, args)
    return permute_from_hf(w, heads) if heads else w


def to_hf_tensor(name: str, w: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    """Our parameter `name`'s value as HF stores it."""
    heads = _heads_of(name, args)
    return permute_to_hf(w, heads) if heads else w


def parameter_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    """Our parameter names and shapes, in the model's order (the tied output is not a parameter of its own)."""
    d, hd = args.dim, args.head_dim
    shapes: dict[str, tuple[int, ...]] = {"tok_embeddings.weight": (args.vocab_size, d)}
    for i in range(args.n_layers):
        p = f"layers.{i}."
        shapes[p + "attention_norm.weight"] = (d,)
        shapes[p + "attention.wq.weight"] = (args.n_heads * hd, d)
        shapes[p + "attention.wk.weight"] = (args.n_kv_heads * hd, d)
        shapes[p + "attention.wv.weight"] = (args.n_kv_heads * hd, d)
        shapes[p + "attention.wo.weight"] = (d, args.n_heads * hd)
        shapes[p + "ffn_norm.weight"] = (d,)
        shapes[p + "feed_forward.w1.weight"] = (args.ffn_dim, d)
        shapes[p + "feed_forward.w2.weight"] = (d, args.ffn_dim)
        shapes[p + "feed_forward.w3.weight"] = (args.ffn_dim, d)
    shapes["norm.weight"] = (d,)
    if not args.tie_embeddings:
        shapes["output.weight"] = (args.vocab_size, d)
    return shapes


# ------------------------------------------------------------------------------- per-parameter fill (any layout)

_WRAPPER_PARTS = ("_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module.")


def canonical_name(name: str) -> str:
    """A parameter name without wrapper prefixes (DDP's `module.`, torch.compile's, activation checkpointing's)."""
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name.removeprefix("module.")


def unwrap(model: nn.Module) -> nn.Module:
    """The Transformer inside a DDP wrapper (FSDP2 and TP keep the module itself)."""
    return model.module if hasattr(model, "module") and not hasattr(model, "args") else model


def named_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """(canonical name, parameter), each parameter once (a tied output weight is the embedding's)."""
    for name, p in model.named_parameters():
        yield canonical_name(name), p


def local_shard(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """The part of `full` that this rank holds of `param` (a plain tensor, or a DTensor of any placements).

    Shards are taken the way DTensor and FSDP2 cut them (torch.chunk: ceil-sized pieces, the last ones smaller
    or empty), mesh dimension by mesh dimension: plain Shard placements left to right, then _StridedShard ones
    (FSDP2 over TP: FSDP shards what TP already sharded) right to left. Pure slicing, no collective, so uneven
    layouts (e.g. FSDP 3 x TP 2) work too; the result is checked against the shard's real shape.
    """
    from torch.distributed.tensor import DTensor, Replicate, Shard

    if not isinstance(param, DTensor):
        return full
    from torch.distributed.tensor.placement_types import _StridedShard

    mesh = param.device_mesh
    coords = mesh.get_coordinate()
    if coords is None:  # this rank is not in the mesh
        return full.new_empty(0)
    plain, strided = [], []
    for mesh_dim, placement in enumerate(param.placements):
        if isinstance(placement, _StridedShard):
            strided.append(mesh_dim)
        elif isinstance(placement, Shard):
            plain.append(mesh_dim)
        elif not isinstance(placement, Replicate):
            raise ValueError(f"cannot place a full value into a {placement} shard")
    local = full
    for mesh_dim in plain + strided[::-1]:
        dim = param.placements[mesh_dim].dim
        pieces = torch.chunk(local, mesh.size(mesh_dim), dim=dim)
        index = coords[mesh_dim]
        if index < len(pieces):
            local = pieces[index]
        else:
            shape = list(local.shape)
            shape[dim] = 0
            local = local.new_empty(shape)
    expected = tuple(param.to_local().shape)
    if tuple(local.shape) != expected:
        raise RuntimeError(
            f"cannot cut a shard of shape {expected} out of {tuple(full.shape)} with placements {param.placements}"
        )
    return local


@torch.no_grad()
def fill_parameters(
    model: nn.Module,
    value: Callable[[str, tuple[int, ...]], torch.Tensor],
    *,
    names: Iterable[str] | None = None,
) -> list[str]:
    """Fill every parameter (or those in `names`) of a materialised, possibly parallelised model in place with
    `value(canonical name, full shape)`, one parameter at a time: each rank copies only its local shard.

    No collective is involved, so ranks may visit parameters in any order; `value` is called on every rank.
    Returns the names filled.
    """
    wanted = None if names is None else set(names)
    filled = []
    for name, p in named_parameters(model):
        if wanted is not None and name not in wanted:
            continue
        full = value(name, tuple(p.shape))
        if tuple(full.shape) != tuple(p.shape):
            raise ConfigError(f"{name}: shape {tuple(full.shape)} does not match the model's {tuple(p.shape)}")
        target = p.to_local() if hasattr(p, "to_local") else p
        target.copy_(local_shard(full, p).to(device=target.device, dtype=target.dtype))
        filled.append(name)
    return filled


# ------------------------------------------------------------------------------------------------------ import


def hf_weight_files(path: str | os.PathLike) -> dict[str, Path]:
    """HF tensor name -> the .safetensors file holding it (single file or sharded with an index)."""
    root = Path(path)
    index = root / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ConfigError(f"{index}: no weight_map")
        return {name: root / file for name, file in weight_map.items()}
    single = root / SINGLE_FILE
    if not single.is_file():
        raise ConfigError(f"{root}: neither {SINGLE_FILE} nor {INDEX_FILE} (only safetensors are supported)")
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as f:
        return dict.fromkeys(f.keys(), single)


@torch.no_grad()
def load_hf_weights(model: nn.Module, path: str | os.PathLike) -> ModelArgs:
    """Fill a materialised model of any layout from the HF Llama directory `path`; returns the HF ModelArgs.

    Every rank streams the tensors it needs one at a time (safetensors.safe_open; files are memory-mapped),
    converts and permutes each, and copies its own shard: no collective and never a full state dict.
    ConfigError for a config that does not match the model, missing or unexpected tensors, or a wrong shape.
    """
    from safetensors import safe_open

    ours = unwrap(model).args
    hf_args = load_hf_model_args(path)
    check_same_model(ours, hf_args)
    files = hf_weight_files(path)
    expected = {hf_name(n): n for n in parameter_shapes(ours)}
    present = {n for n in files if not _IGNORED_HF_KEYS.match(n)}
    if ours.tie_embeddings:
        present.discard("lm_head.weight")  # some tied checkpoints store the shared matrix twice
    missing = sorted(set(expected) - present)
    unexpected = sorted(present - set(expected))
    if missing or unexpected:
        parts = [f"missing {', '.join(missing)}" if missing else "", f"unexpected {', '.join(unexpected)}"]
        raise ConfigError(f"{path}: tensors do not match a Llama of this shape: {'; '.join(p for p in parts if p)}")

    with ExitStack() as stack:
        handles: dict[Path, object] = {}

        def value(name: str, shape: tuple[int, ...]) -> torch.Tensor:
            key = hf_name(name)
            file = files[key]
            if file not in handles:
                handles[file] = stack.enter_context(safe_open(str(file), framework="pt", device="cpu"))
            w = handles[file].get_tensor(key)
            if tuple(w.shape) != shape:
                raise ConfigError(f"{key}: shape {tuple(w.shape)} in {file.name}, the model needs {shape}")
            return from_hf_tensor(name, w, ours)

        filled = fill_parameters(model, value)
    not_filled = sorted(set(expected.values()) - set(filled))
    if not_filled:
        raise ConfigError(f"the model has no parameters named {', '.join(not_filled)}")
    return hf_args


# ------------------------------------------------------------------------------------------------------ export


class SafetensorsWriter:
    """Writes tensors as they come into shards of at most `max_shard_bytes` (a single tensor may exceed it);
    `close` names them as transformers does: model.safetensors alone, else model-0000i-of-0000n + an index."""

    def __init__(self, out_dir: str | os.PathLike, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.max = max_shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[tuple[Path, list[str]]] = []
        self.total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max:
            self._flush()
        self.pending[name] = tensor.detach().to("cpu").contiguous()
        self.pending_bytes += size
        self.total += size

    def _flush(self) -> None:
        from safetensors.torch import save_file

        path = self.out / f".shard-{len(self.shards):05d}.safetensors.tmp"
        save_file(self.pending, str(path), metadata={"format": "pt"})
        self.shards.append((path, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> list[Path]:
        if self.pending or not self.shards:
            self._flush()
        for stale in self.out.glob("model-*-of-*.safetensors"):  # an earlier export into the same directory
            stale.unlink()
        if len(self.shards) == 1:
            final = self.out / SINGLE_FILE
            self.shards[0][0].replace(final)
            (self.out / INDEX_FILE).unlink(missing_ok=True)
            return [final]
        n = len(self.shards)
        weight_map, finals = {}, []
        for i, (path, names) in enumerate(self.shards, start=1):
            final = self.out / f"model-{i:05d}-of-{n:05d}.safetensors"
            path.replace(final)
            finals.append(final)
            weight_map.update(dict.fromkeys(names, final.name))
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}
        (self.out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        (self.out / SINGLE_FILE).unlink(missing_ok=True)
        return finals


def copy_tokenizer(tokenizer: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Copy a HF tokenizer (a directory's tokenizer files, or one tokenizer.json) into `out_dir`."""
    src, out = Path(tokenizer), Path(out_dir)
    if src.is_file():
        sources = [src]
    elif src.is_dir():
        sources = [src / name for name in TOKENIZER_FILES if (src / name).is_file()]
    else:
        raise ConfigError(f"tokenizer: {src} does not exist")
    if not sources:
        raise ConfigError(f"tokenizer: {src} holds none of {', '.join(TOKENIZER_FILES)}")
    copied = []
    for file in sources:
        target = out / ("tokenizer.json" if src.is_file() else file.name)
        shutil.copyfile(file, target)
        copied.append(target)
    return copied


def _special_ids(tokenizer: str | os.PathLike | None) -> tuple[int | None, int | None]:
    """(bos, eos) ids named in a tokenizer directory's tokenizer_config.json + tokenizer.json, when found."""
    if tokenizer is None or not Path(tokenizer).is_dir():
        return None, None
    root = Path(tokenizer)
    try:
        cfg = json.loads((root / "tokenizer_config.json").read_text())
        vocab = {t["content"]: t["id"] for t in json.loads((root / "tokenizer.json").read_text())["added_tokens"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None, None

    def token_id(key: str) -> int | None:
        token = cfg.get(key)
        token = token.get("content") if isinstance(token, dict) else token
        return vocab.get(token) if isinstance(token, str) else None

    return token_id("bos_token"), token_id("eos_token")


def write_hf_model(
    tensors: Iterable[tuple[str, torch.Tensor]],
    out_dir: str | os.PathLike,
    args: ModelArgs,
    *,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    tokenizer: str | os.PathLike | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | list[int] | None = None,
) -> Path:
    """Write a HF Llama directory from (our name, full fp32 value) pairs, consumed one at a time.

    A tied model's output weight is not written (transformers ties lm_head to the embedding on load).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shapes = parameter_shapes(args)
    writer = SafetensorsWriter(out, max_shard_bytes)
    seen = set()
    for name, value in tensors:
        if name == "output.weight" and args.tie_embeddings:
            continue
        if name not in shapes:
            raise ConfigError(f"{name}: not a parameter of a Llama of this shape")
        if tuple(value.shape) != shapes[name]:
            raise ConfigError(f"{name}: shape {tuple(value.shape)}, a Llama of this shape needs {shapes[name]}")
        writer.add(hf_name(name), to_hf_tensor(name, value.detach().to("cpu", dtype), args))
        seen.add(name)
    missing = sorted(set(shapes) - seen)
    if missing:
        raise ConfigError(f"export: no value for {', '.join(missing)}")
    writer.close()
    if tokenizer is not None:
        copy_tokenizer(tokenizer, out)
        bos, eos = _special_ids(tokenizer)
        bos_token_id = bos if bos_token_id is None else bos_token_id
        eos_token_id = eos if eos_token_id is None else eos_token_id
    config = hf_config_from_model_args(args, dtype=dtype, bos_token_id=bos_token_id, eos_token_id=eos_token_id)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    generation = {"_from_model_config": True, "bos_token_id": bos_token_id, "eos_token_id": eos_token_id}
    (out / GENERATION_CONFIG_FILE).write_text(json.dumps(generation, indent=2) + "\n")
    return out


def gathered_parameters(model: nn.Module, *, keep: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full value on CPU) of every parameter, one at a time; collective: every rank must iterate all of
    it in step. Sharded parameters are all-gathered (DTensor.full_tensor, as get_model_state_dict does with
    full_state_dict=True), so no rank ever holds more than one full tensor; ranks with keep=False get nothing."""
    for name, p in named_parameters(model):
        full = p.full_tensor() if hasattr(p, "full_tensor") else p.detach()
        if keep:
            yield name, full.detach().to("cpu")
        del full


def save_hf_model(
    model: nn.Module,
    out_dir: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    tokenizer: str | os.PathLike | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | list[int] | None = None,
) -> Path | None:
    """Export a live (possibly parallelised) model as a HF Llama directory; collective, rank 0 writes.

    Streams: parameters are gathered one at a time and written to shards as they come, so rank 0 holds at most
    one shard (max_shard_bytes) plus one full tensor. Returns the directory on rank 0, None elsewhere.
    """
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    args = unwrap(model).args
    tensors = gathered_parameters(model, keep=rank == 0)
    out = None
    if rank == 0:
        out = write_hf_model(
            tensors,
            out_dir,
            args,
            dtype=dtype,
            max_shard_bytes=max_shard_bytes,
            tokenizer=tokenizer,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
        )
    else:
        for _ in tensors:
            pass
    if distributed:
        dist.barrier()
    return out


def parse_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise ConfigError(f"dtype: {name!r} is not one of {', '.join(_DTYPES)}") from None
