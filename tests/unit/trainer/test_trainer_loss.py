"""The chunked cross-entropy: the loss and gradients of the plain fp32 cross-entropy on the full logits, without
ever holding those logits (one chunk's at a time), in one process and under FSDP, DDP and tensor parallelism."""

from __future__ import annotations

import pytest
import torch
from hf_runs import TINY_ARGS, run_scenario
from llmtrain_trainer.loss import IGNORE_INDEX, chunk_tokens_for, chunked_cross_entropy, cross_entropy
from llmtrain_trainer.model import ModelArgs, Transformer

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
    got = chunked_cross_entropy(hidden, targets, lambda h: h @ weight.T, chunk_tokens=5)
    want = cross_entropy(hidden @ weight.T, targets)
    assert_close(got, want)
    (got_hidden, got_weight), (want_hidden, want_weight) = (
        torch.autograd.grad(loss, (hidden, weight)) for loss in (got, want)
    )
    assert_close(got_hidden, want_hidden)
    assert_close(got_weight, want_weight)


def test_forward_saves_no_logits_for_backward():
    """Under checkpointing only the chunks' inputs are kept: nothing as large as one chunk's logits."""
    inputs, targets = batch()
    model = tiny_model()
    model.loss_chunk_tokens = 16
    saved: list[int] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        h = model.tok_embeddings(inputs)
        for block in model.layers.values():
            h = block(h)
        before_loss = len(saved)
        chunked_cross_entropy(h, targets, model.logits, model.loss_chunk_tokens)
    assert max(saved[before_loss:]) < 16 * TINY_ARGS["vocab_size"]


def test_backward_recomputes_each_chunks_logits_once():
    hidden = torch.randn(40, 8, requires_grad=True)
    weight = torch.randn(32, 8, requires_grad=True)
    head_calls: list[int] = []

    def head(h: torch.Tensor) -> torch.Tensor:
        head_calls.append(h.shape[0])
        return h @ weight.T

    loss = chunked_cross_entropy(hidden, torch.randint(0, 32, (40,)), head, chunk_tokens=10)
    assert head_calls == [10, 10, 10, 10]
    loss.backward()
    assert head_calls == [10] * 8


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
