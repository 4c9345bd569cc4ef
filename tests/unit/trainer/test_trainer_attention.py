"""Grouped-query attention runs through SDPA's `enable_gqa`: the same outputs and gradients as repeating K and V,
without the repeated copies."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from llmtrain_trainer.model import ModelArgs, Transformer, attend
from torch.utils._python_dispatch import TorchDispatchMode


def repeated_kv_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The previous implementation: each kv head copied for its group of query heads."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def qkv(heads: int, kv_heads: int, *, seq: int = 24, head_dim: int = 16) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    shapes = [(2, heads, seq, head_dim), (2, kv_heads, seq, head_dim), (2, kv_heads, seq, head_dim)]
    return [torch.randn(shape, generator=gen, requires_grad=True) for shape in shapes]


class OpNames(TorchDispatchMode):
    """Records the aten ops that run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(("heads", "kv_heads"), [(8, 2), (4, 4), (6, 1)])
def test_gqa_gives_the_outputs_and_gradients_of_repeated_kv_heads(heads, kv_heads):
    ours = qkv(heads, kv_heads)
    reference = [t.detach().clone().requires_grad_() for t in ours]
    out, expected = attend(*ours), repeated_kv_attention(*reference)
    assert (out - expected).abs().max().item() <= 1e-6
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    for got, want in zip(ours, reference, strict=True):
        assert (got.grad - want.grad).abs().max().item() <= 1e-6


def test_gqa_makes_no_repeated_copies_of_k_and_v():
    with OpNames() as ops:
        attend(*qkv(8, 2)).sum().backward()
    assert not [name for name in ops.names if "repeat" in name or "index_select" in name]
    assert any("scaled_dot_product" in name for name in ops.names)


def test_a_gqa_model_trains_forward_and_backward():
    args = ModelArgs(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, ffn_dim=96, vocab_size=128, max_seq_len=32)
    model = Transformer(args)
    model.init_weights(seed=0)
    tokens = torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(0))
    model(tokens).float().logsumexp(-1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
