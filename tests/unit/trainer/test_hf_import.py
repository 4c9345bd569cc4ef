"""Importing a Hugging Face Llama: a tiny random transformers model, saved with save_pretrained, imported into
our model alone and in parallel layouts (torchrun on gloo/CPU) gives transformers' logits (fp32, <= 1e-4;
measured ~5e-7). Bad directories fail with a ConfigError naming what is wrong."""

from __future__ import annotations

import json

import pytest
import torch
from hf_runs import LOGITS_ATOL, TINY_HF, TOKENS, hf_logits, run_scenario, tiny_hf_model
from llmtrain_trainer.config import ConfigError
from llmtrain_trainer.hf_checkpoint import INDEX_FILE, load_hf_model_args, load_hf_weights
from llmtrain_trainer.model import Transformer

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "tiny"
    model = tiny_hf_model(path)
    return path, hf_logits(model)


def imported(path) -> Transformer:
    args = load_hf_model_args(path)
    model = Transformer(args)
    load_hf_weights(model, path)
    return model


def ours(model: Transformer, tokens=TOKENS) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(tokens))


def test_the_tiny_model_is_what_the_brief_asks_for(tiny_hf):
    path, _ = tiny_hf
    config = json.loads((path / "config.json").read_text())
    shape = (config["num_attention_heads"], config["num_key_value_heads"], config["tie_word_embeddings"])
    assert shape == (4, 2, False)
    args = load_hf_model_args(path)
    assert (args.n_heads, args.n_kv_heads, args.rope_theta, args.tie_embeddings) == (4, 2, 50000.0, False)


def test_single_process_import_gives_transformers_logits(tiny_hf):
    path, expected = tiny_hf
    got = ours(imported(path))
    assert (got - expected).abs().max().item() <= LOGITS_ATOL


def test_import_works_through_activation_checkpointing_wrappers(tiny_hf):
    from llmtrain_trainer.parallelize import apply_activation_checkpointing

    path, expected = tiny_hf
    model = Transformer(load_hf_model_args(path))
    apply_activation_checkpointing(model, "full")
    load_hf_weights(model, path)
    assert (ours(model) - expected).abs().max().item() <= LOGITS_ATOL


def test_sharded_bf16_checkpoints_import(tmp_path):
    """An index + several files, stored in bf16: converted to our fp32 parameters."""
    from transformers import LlamaForCausalLM

    model = tiny_hf_model(tmp_path / "fp32")
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16", max_shard_size="40KB")
    assert (tmp_path / "bf16" / INDEX_FILE).is_file()
    assert len(list((tmp_path / "bf16").glob("model-*.safetensors"))) > 2
    reference = LlamaForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.float32).eval()
    got = ours(imported(tmp_path / "bf16"))
    assert (got - hf_logits(reference)).abs().max().item() <= LOGITS_ATOL


def test_a_model_of_another_shape_is_refused_naming_the_key(tiny_hf):
    path, _ = tiny_hf
    args = load_hf_model_args(path)
    from dataclasses import replace

    with pytest.raises(ConfigError, match=r"^num_key_value_heads: the checkpoint has 2, the model being filled 4"):
        load_hf_weights(Transformer(replace(args, n_kv_heads=4)), path)
    with pytest.raises(ConfigError, match=r"^rope_theta"):
        load_hf_weights(Transformer(replace(args, rope_theta=10000.0)), path)
    # only the RoPE table's length may differ
    load_hf_weights(Transformer(replace(args, max_seq_len=16)), path)


def _rewrite(src, dst, edit):
    """Copy the HF directory src to dst with its tensors edited by edit(dict) -> dict."""
    from safetensors.torch import load_file, save_file

    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    save_file(edit(load_file(src / "model.safetensors")), dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_missing_and_unexpected_tensors_are_named(tiny_hf, tmp_path):
    path, _ = tiny_hf

    def edit(tensors):
        tensors.pop("model.layers.1.mlp.up_proj.weight")
        tensors["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
        tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.zeros(8)  # harmless, ignored
        return tensors

    bad = _rewrite(path, tmp_path / "bad", edit)
    with pytest.raises(ConfigError) as err:
        imported(bad)
    message = str(err.value)
    assert "missing model.layers.1.mlp.up_proj.weight" in message
    assert "unexpected model.layers.0.self_attn.q_proj.bias" in message
    assert "inv_freq" not in message


def test_a_tensor_of_the_wrong_shape_is_named(tiny_hf, tmp_path):
    path, _ = tiny_hf

    def edit(tensors):
        tensors["model.norm.weight"] = torch.ones(65)
        return tensors

    with pytest.raises(ConfigError, match=r"^model\.norm\.weight: shape \(65,\)"):
        imported(_rewrite(path, tmp_path / "bad", edit))


def test_a_directory_without_weights_or_config_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.json: not found"):
        load_hf_model_args(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**TINY_HF, "model_type": "llama"}))
    with pytest.raises(ConfigError, match=r"neither model\.safetensors nor"):
        imported(tmp_path)


@pytest.mark.parametrize("layout", ["fsdp2", "tp2", "fsdp2_tp2"])
def test_parallel_import_gives_transformers_logits(tiny_hf, tmp_path, layout):
    """FSDP2 over 2 ranks, TP=2, and FSDP 2 x TP 2 (DTensor parameters with _StridedShard)."""
    path, expected = tiny_hf
    result = run_scenario("import", layout, tmp_path, hf=str(path))
    assert (result["logits"] - expected).abs().max().item() <= LOGITS_ATOL
