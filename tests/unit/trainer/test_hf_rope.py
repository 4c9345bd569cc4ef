"""RoPE: Llama 3.1's rope_scaling computes what transformers computes, and the table stays fp32 under FSDP's
bf16 mixed precision (it used to be a block input, which MixedPrecisionPolicy cast to bf16: cos/sin off by up
to ~2e-3)."""

from __future__ import annotations

import pytest
import torch
from hf_runs import LOGITS_ATOL, TINY_ARGS, hf_logits, run_scenario, tiny_hf_model
from llmtrain_trainer.hf_checkpoint import load_hf_model_args, load_hf_weights
from llmtrain_trainer.model import RopeScaling, Transformer, rope_table

# wavelengths of head_dim 16, theta 10000 run from 6 to ~20000 positions: with an original context of 64 and
# factors 1 and 4, some frequencies are kept (< 16), some divided by 8 (> 64) and some interpolated
LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
LONG_TOKENS = [[(7 * i + 3) % 128 for i in range(200)], [(11 * i + 5) % 128 for i in range(200)]]


def test_llama31_rope_scaling_gives_transformers_logits(tmp_path):
    pytest.importorskip("transformers")
    hf = tiny_hf_model(tmp_path, rope_theta=10000.0, max_position_embeddings=256, rope_scaling=LLAMA3_SCALING)
    args = load_hf_model_args(tmp_path)
    assert args.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 64)
    model = Transformer(args)
    load_hf_weights(model, tmp_path)
    with torch.no_grad():
        got = model(torch.tensor(LONG_TOKENS))
    assert (got - hf_logits(hf, LONG_TOKENS)).abs().max().item() <= LOGITS_ATOL
    # the same frequencies as transformers' own table
    ours = torch.atan2(model.rope[1, :, 1], model.rope[1, :, 0])
    assert torch.allclose(ours, hf.model.rotary_emb.inv_freq.float(), rtol=1e-6, atol=0)
    # and scaling matters here: without it the logits differ
    plain = Transformer(args.__class__(**{**args.__dict__, "rope_scaling": None}))
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert (plain(torch.tensor(LONG_TOKENS)) - got).abs().max().item() > 1e-3


@pytest.mark.parametrize("layout", ["single", "tp2"])
def test_the_rope_table_stays_fp32_under_fsdp_bf16(tmp_path, layout):
    """apply_rope sees the exact fp32 table in every block with bf16 parameters (FSDP2, and FSDP2 over TP)."""
    args = {**TINY_ARGS, "rope_theta": 10000.0}
    result = run_scenario("rope", layout, tmp_path, args=args, precision="bf16")
    assert result["calls"] == 2 * 2  # q and k in each of the 2 blocks
    assert result["dtypes"] == ["torch.float32"]
    assert result["max_error"] == 0.0


def test_the_bf16_error_this_guards_against_is_real():
    """What a bf16 table would cost: cos/sin off by up to ~2e-3 (the tolerance above is exact equality)."""
    table = rope_table(16, 64, 10000.0)
    assert (table.to(torch.bfloat16).float() - table).abs().max().item() > 1e-3
