"""The fused, chunked cross-entropy: the loss and gradients of the plain fp32 cross-entropy on the full logits,
without ever holding those logits (one chunk's at a time) or recomputing them, in one process and under FSDP, DDP
and tensor parallelism (which keeps the plain loss on vocabulary-sharded logits)."""

from __future__ import annotations

import pytest
import torch
from hf_runs import TINY_ARGS, run_scenario
from llmtrain_trainer.loss import IGNORE_INDEX, chunk_tokens_for, cross_entropy, linear_cross_entropy
from llmtrain_trainer.model import ModelArgs, Transformer
from torch.utils._python_dispatch import TorchDispatchMode

REL = 1e-5
BATCH, SEQ = 3, 20  # 60 tokens: chunks of 16 leave a ragged last one


def tiny_model(seed: int = 0) -> Transformer:
    model = Transformer(ModelArgs(**TINY_ARGS))
    model.init_weights(seed=seed)
    return model


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, TINY_ARGS["vocab_size"], (BATCH, SEQ + 1), generator=torch.Generator().manual_seed(seed))
    return tokens[:, :-1], tokens[:, 1:]


def loss_and_grads(model: Transformer, loss_fn) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, rtol=REL, atol=REL * want.abs().max().item())


def plain_loss(model: Transformer, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The previous training loss: fp32 cross-entropy of the full logits."""
    return cross_entropy(model(inputs), targets)


@pytest.mark.parametrize("chunk_tokens", [1, 16, 60, 1000])
def test_the_models_loss_and_gradients_equal_the_plain_cross_entropys(chunk_tokens):
    inputs, targets = batch()
    model = tiny_model()
    want_loss, want_grads = loss_and_grads(model, lambda m: plain_loss(m, inputs, targets))
    model.loss_chunk_tokens = chunk_tokens
    got_loss, got_grads = loss_and_grads(model, lambda m: m(inputs, targets))
    assert_close(got_loss, want_loss)
    for name, grad in want_grads.items():
        assert_close(got_grads[name], grad)


def test_ignored_targets_count_for_nothing_as_in_the_plain_loss():
    hidden = torch.randn(2, 9, 8, requires_grad=True)
    weight = torch.randn(32, 8, requires_grad=True)
    targets = torch.randint(0, 32, (2, 9))
    targets[0, :4] = IGNORE_INDEX
    got = linear_cross_entropy(hidden, weight, targets, chunk_tokens=5)
    want = cross_entropy(hidden @ weight.T, targets)
    assert_close(got, want)
    (got_hidden, got_weight), (want_hidden, want_weight) = (
        torch.autograd.grad(loss, (hidden, weight)) for loss in (got, want)
    )
    assert_close(got_hidden, want_hidden)
    assert_close(got_weight, want_weight)


def test_the_incoming_gradient_scales_both_gradients():
    """The step divides the loss by its micro-batches and fp16 multiplies it by the loss scale."""
    hidden, weight = torch.randn(12, 8, requires_grad=True), torch.randn(32, 8, requires_grad=True)
    targets = torch.randint(0, 32, (12,))
    got = torch.autograd.grad(linear_cross_entropy(hidden, weight, targets, 5) * 3.5, (hidden, weight))
    want = torch.autograd.grad(cross_entropy(hidden @ weight.T, targets) * 3.5, (hidden, weight))
    for g, w in zip(got, want, strict=True):
        assert_close(g, w)


def test_forward_saves_no_logits_for_backward():
    """Forward keeps the hidden states' and the weight's gradients, nothing of the (tokens, vocabulary) shape."""
    hidden, weight = torch.randn(60, 8, requires_grad=True), torch.randn(128, 8, requires_grad=True)
    saved: list[tuple[int, ...]] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        linear_cross_entropy(hidden, weight, torch.randint(0, 128, (60,)), chunk_tokens=16)
    assert sorted(saved) == [(), (60, 8), (128, 8)]  # the token count, the two gradients


class OpNames(TorchDispatchMode):
    """Records the aten ops that run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def test_backward_recomputes_nothing():
    hidden, weight = torch.randn(40, 8, requires_grad=True), torch.randn(32, 8, requires_grad=True)
    loss = linear_cross_entropy(hidden, weight, torch.randint(0, 32, (40,)), chunk_tokens=10)
    with OpNames() as ops:
        loss.backward()
    assert not [op for op in ops.names if "mm" in op or "softmax" in op or "logsumexp" in op]


def test_without_gradients_the_loss_is_the_same_and_nothing_is_recomputed():
    inputs, targets = batch()
    model = tiny_model()
    model.loss_chunk_tokens = 16
    with torch.no_grad():
        assert_close(model(inputs, targets), plain_loss(model, inputs, targets))


def test_under_bf16_autocast_the_loss_is_still_fp32():
    inputs, targets = batch()
    model = tiny_model()
    model.loss_chunk_tokens = 16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(inputs, targets)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(plain_loss(model, inputs, targets).item(), rel=2e-2)


def test_with_bf16_parameters_as_fsdp_gathers_them_the_gradients_are_bf16_and_the_loss_fp32():
    hidden = torch.randn(24, 8, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(32, 8, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, 32, (24,))
    loss = linear_cross_entropy(hidden, weight, targets, chunk_tokens=10)
    loss.backward()
    want = cross_entropy(hidden.float() @ weight.float().T, targets)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(want.item(), rel=1e-2)
    assert hidden.grad.dtype == weight.grad.dtype == torch.bfloat16


def test_under_fp16_with_a_loss_scale_small_gradients_survive_as_in_the_plain_loss():
    """8192 tokens x 2048 words: each token's softmax share of the mean loss's gradient is ~6e-8, below fp16's
    normal range; the loss scale must lift it before anything is fp16, as in the plain loss's backward."""
    gen = torch.Generator().manual_seed(3)
    tokens, vocab = 8192, 2048
    hidden = torch.randn(tokens, 8, generator=gen).half().requires_grad_()
    weight = (torch.randn(vocab, 8, generator=gen) * 0.02).half().requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), generator=gen)
    scale = 2.0**16
    (linear_cross_entropy(hidden, weight, targets, chunk_tokens=2048) * scale).backward()
    reference = [t.detach().float().requires_grad_() for t in (hidden, weight)]
    (cross_entropy(reference[0] @ reference[1].T, targets) * scale).backward()
    for got, want in zip((hidden.grad, weight.grad), (reference[0].grad, reference[1].grad), strict=True):
        torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-2 * want.abs().max().item())


def test_chunks_hold_a_fixed_budget_of_logits_whatever_the_vocabulary():
    assert chunk_tokens_for(32_000) == 2097
    assert chunk_tokens_for(128_256) == 523
    assert chunk_tokens_for(50_000_000) == 128  # never thinner than the floor


@pytest.mark.parametrize("layout", ["fsdp2", "ddp", "tp2_loss_parallel", "tp2"])
def test_the_loss_and_gradients_under_each_layout_equal_one_process_plain_loss(layout, tmp_path):
    inputs, targets = batch()
    model = tiny_model()
    want_loss, want_grads = loss_and_grads(model, lambda m: plain_loss(m, inputs, targets))
    got = run_scenario(
        "loss", layout, tmp_path, args=TINY_ARGS, inputs=inputs.tolist(), targets=targets.tolist(), chunk_tokens=16
    )
    assert got["chunk_tokens"] == (0 if layout.startswith("tp") else 16)  # TP keeps its vocabulary-sharded path
    assert_close(got["loss"], want_loss)
    assert got["grads"].keys() == want_grads.keys()
    for name, grad in want_grads.items():
        assert_close(got["grads"][name], grad)
