"""Pure parts of the Hugging Face import/export: config and name mappings, the q/k row permutation, shard
cutting, the safetensors shard writer. No transformers needed."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from llmtrain_contract.presets import PRESETS
from llmtrain_trainer.config import ConfigError
from llmtrain_trainer.hf_checkpoint import (
    INDEX_FILE,
    SINGLE_FILE,
    SafetensorsWriter,
    canonical_name,
    from_hf_tensor,
    hf_config_from_model_args,
    hf_name,
    local_shard,
    model_args_from_hf_config,
    model_args_from_json,
    model_args_to_json,
    our_name,
    parameter_shapes,
    permute_from_hf,
    permute_to_hf,
    to_hf_tensor,
)
from llmtrain_trainer.model import ModelArgs, RopeScaling, Transformer, apply_rope, rope_table

LLAMA31_8B = {  # config.json of Llama 3.1 8B (transformers 4 style)
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vocab_size": 128256,
}
SCALING = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)


def test_llama31_config_maps_to_the_8b_preset_shape_with_its_rope_scaling():
    args = model_args_from_hf_config(LLAMA31_8B)
    assert args == replace(PRESETS["llama-8b"], max_seq_len=131072, rope_scaling=SCALING)


def test_transformers5_rope_parameters_are_read_like_the_legacy_keys():
    v5 = {k: v for k, v in LLAMA31_8B.items() if k not in ("rope_scaling", "rope_theta")}
    v5["rope_parameters"] = {**LLAMA31_8B["rope_scaling"], "rope_theta": 500000.0}
    assert model_args_from_hf_config(v5) == model_args_from_hf_config(LLAMA31_8B)
    plain = {**v5, "rope_parameters": {"rope_type": "default", "rope_theta": 50000.0}}
    args = model_args_from_hf_config(plain)
    assert (args.rope_theta, args.rope_scaling) == (50000.0, None)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"model_type": "mistral"}, "model_type"),
        ({"attention_bias": True}, "attention_bias"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"head_dim": 64}, "head_dim"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, r"rope_scaling\.rope_type"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, r"rope_scaling\.low_freq_factor"),
        ({"num_hidden_layers": None}, "num_hidden_layers"),
        ({"num_key_value_heads": 5}, r"model\.kvHeads"),
    ],
)
def test_unsupported_configs_are_rejected_naming_the_key(change, key):
    with pytest.raises(ConfigError, match=rf"^{key}"):
        model_args_from_hf_config({**LLAMA31_8B, **change})


def test_config_round_trips_through_the_hf_form():
    for args in [*PRESETS.values(), replace(PRESETS["llama-8b"], rope_scaling=SCALING, norm_eps=1e-6)]:
        hf = hf_config_from_model_args(args)
        assert hf["architectures"] == ["LlamaForCausalLM"] and hf["model_type"] == "llama"
        assert model_args_from_hf_config(json.loads(json.dumps(hf))) == args
        assert model_args_from_json(json.loads(json.dumps(model_args_to_json(args)))) == args


def test_every_parameter_has_an_hf_name_and_back():
    args = replace(PRESETS["tiny"], n_layers=3)
    model = Transformer(args)
    names = [n for n, _ in model.named_parameters()]
    assert {n: tuple(p.shape) for n, p in model.named_parameters()} == parameter_shapes(args)
    hf = [hf_name(n) for n in names]
    assert len(set(hf)) == len(hf)
    assert [our_name(n) for n in hf] == names
    assert hf_name("layers.2.feed_forward.w1.weight") == "model.layers.2.mlp.gate_proj.weight"
    assert hf_name("output.weight") == "lm_head.weight"
    with pytest.raises(KeyError):
        our_name("model.layers.0.self_attn.q_proj.bias")


def test_tied_models_have_no_output_parameter():
    args = PRESETS["gpt2-124m"]
    assert "output.weight" not in parameter_shapes(args)


def test_wrapper_prefixes_are_dropped_from_names():
    assert canonical_name("module.layers.0._checkpoint_wrapped_module.attention.wq.weight") == (
        "layers.0.attention.wq.weight"
    )
    assert canonical_name("layers.1._orig_mod.ffn_norm.weight") == "layers.1.ffn_norm.weight"


def test_qk_permutation_round_trips_and_pairs_channel_i_with_i_plus_half():
    n_heads, head_dim, dim = 3, 8, 5
    w = torch.arange(n_heads * head_dim * dim, dtype=torch.float32).reshape(n_heads * head_dim, dim)
    ours = permute_from_hf(w, n_heads)
    assert torch.equal(permute_to_hf(ours, n_heads), w)
    assert torch.equal(permute_from_hf(permute_to_hf(w, n_heads), n_heads), w)
    half = head_dim // 2
    for h in range(n_heads):
        for i in range(half):
            assert torch.equal(ours[h * head_dim + 2 * i], w[h * head_dim + i])
            assert torch.equal(ours[h * head_dim + 2 * i + 1], w[h * head_dim + half + i])


def test_only_q_and_k_are_permuted_with_their_own_head_counts():
    args = ModelArgs(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=16, max_seq_len=8)
    q, k = torch.randn(32, 32), torch.randn(16, 32)
    assert torch.equal(from_hf_tensor("layers.0.attention.wq.weight", q, args), permute_from_hf(q, 4))
    assert torch.equal(from_hf_tensor("layers.0.attention.wk.weight", k, args), permute_from_hf(k, 2))
    assert from_hf_tensor("layers.0.attention.wv.weight", k, args) is k
    assert to_hf_tensor("layers.0.attention.wo.weight", q, args) is q


def rotate_half_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """HF's RoPE on (batch, seq, heads, head_dim): channel i rotates with channel i + head_dim/2."""
    seq, head_dim = x.shape[1], x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq)
    emb = torch.cat((angles, angles), dim=-1)[None, :, None, :]
    x1, x2 = x[..., : head_dim // 2], x[..., head_dim // 2 :]
    return x * emb.cos() + torch.cat((-x2, x1), dim=-1) * emb.sin()


def test_the_permutation_turns_hf_rope_into_ours_for_q_and_k():
    """q = x W^T: permuting W's rows per head is permuting q's channels, and RoPE commutes with it."""
    n_heads, head_dim, dim, seq = 2, 8, 16, 5
    w_hf, x = torch.randn(n_heads * head_dim, dim), torch.randn(1, seq, dim)
    q_hf = (x @ w_hf.T).view(1, seq, n_heads, head_dim)
    q_ours = (x @ permute_from_hf(w_hf, n_heads).T).view(1, seq, n_heads, head_dim)
    rotated_ours = apply_rope(q_ours, rope_table(head_dim, seq, 10000.0))
    rotated_hf = rotate_half_rope(q_hf, 10000.0)
    back = permute_to_hf(rotated_ours.reshape(seq * n_heads, head_dim).T, 1).T  # channels back to HF order
    assert torch.allclose(back.reshape(rotated_hf.shape), rotated_hf, atol=1e-6)
    # and attention scores (dot products of q and k per head) do not depend on the channel order
    assert torch.allclose(
        (rotated_ours * rotated_ours).sum(-1), (rotated_hf * rotated_hf).sum(-1), atol=1e-5, rtol=1e-6
    )


def test_the_default_rope_table_is_unchanged():
    head_dim, seq, theta = 16, 12, 50000.0
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq)
    expected = torch.stack((angles.cos(), angles.sin()), dim=-1)
    assert torch.equal(rope_table(head_dim, seq, theta), expected)
    assert torch.equal(Transformer(ModelArgs(64, 1, 4, 4, 64, 16, seq, rope_theta=theta)).rope, expected)


def test_llama3_scaling_divides_low_frequencies_and_keeps_high_ones():
    scaling = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64)
    plain, scaled = rope_table(32, 2, 10000.0), rope_table(32, 2, 10000.0, scaling=scaling)
    angle_plain = torch.atan2(plain[1, :, 1], plain[1, :, 0])  # position 1: the angle is the frequency
    angle_scaled = torch.atan2(scaled[1, :, 1], scaled[1, :, 0])
    wavelen = 2 * torch.pi / angle_plain
    high, low = wavelen < 64 / 4, wavelen > 64 / 1
    assert high.any() and low.any() and (~high & ~low).any()
    assert torch.allclose(angle_scaled[high], angle_plain[high])
    assert torch.allclose(angle_scaled[low], angle_plain[low] / 8)
    middle = ~high & ~low
    assert (angle_scaled[middle] < angle_plain[middle]).all() and (angle_scaled[middle] > angle_plain[middle] / 8).all()
    assert rope_table(32, 2, 10000.0, scaling=scaling).dtype == torch.float32


def test_a_plain_tensor_is_its_own_shard():
    full = torch.randn(4, 3)
    assert local_shard(full, torch.empty(4, 3)) is full


def test_the_writer_keeps_one_file_below_the_threshold_and_shards_above_it(tmp_path):
    from safetensors import safe_open

    tensors = {f"t{i}": torch.full((10,), float(i)) for i in range(5)}  # 40 bytes each
    one = SafetensorsWriter(tmp_path / "one", max_shard_bytes=1000)
    for name, t in tensors.items():
        one.add(name, t)
    assert one.close() == [tmp_path / "one" / SINGLE_FILE]
    assert not (tmp_path / "one" / INDEX_FILE).exists()

    many = SafetensorsWriter(tmp_path / "many", max_shard_bytes=100)
    for name, t in tensors.items():
        many.add(name, t)
    files = many.close()
    assert [f.name for f in files] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tmp_path / "many" / INDEX_FILE).read_text())
    assert index["metadata"]["total_size"] == 200
    assert index["weight_map"] == {"t0": files[0].name, "t1": files[0].name, "t2": files[1].name,
                                   "t3": files[1].name, "t4": files[2].name}  # fmt: skip
    for name, file in index["weight_map"].items():
        with safe_open(str(tmp_path / "many" / file), framework="pt") as f:
            assert torch.equal(f.get_tensor(name), tensors[name])
            assert f.metadata() == {"format": "pt"}
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == sorted([*(f.name for f in files), INDEX_FILE])
