"""Selective activation checkpointing keeps attention, TP collectives and every other matmul, recomputes the rest,
and changes no gradient; `training.compile` unset means compiled on CUDA only."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from hf_runs import TINY_ARGS, run_scenario
from llmtrain_trainer.model import ModelArgs, Transformer
from llmtrain_trainer.parallelize import SelectivePolicy, apply_activation_checkpointing, resolve_compile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import CheckpointPolicy

MATMULS_PER_BLOCK = 7  # wq, wk, wv, wo, w1, w3, w2


class OpCounts(TorchDispatchMode):
    """How often each aten op ran inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def tiny_model() -> Transformer:
    model = Transformer(ModelArgs(**TINY_ARGS))
    model.init_weights(seed=0)
    return model


def tokens() -> tuple[torch.Tensor, torch.Tensor]:
    batch = torch.randint(0, TINY_ARGS["vocab_size"], (2, 17), generator=torch.Generator().manual_seed(0))
    return batch[:, :-1], batch[:, 1:]


def backward_op_counts(model: Transformer) -> Counter[str]:
    """The ops of backward alone (recomputation included), after an uncounted forward."""
    loss = model(*tokens())
    with OpCounts() as ops:
        loss.backward()
    return ops.counts


class Ctx:
    def __init__(self, is_recompute: bool) -> None:
        self.is_recompute = is_recompute


@pytest.mark.parametrize("mode", ["selective", "full"])
def test_checkpointed_blocks_give_the_gradients_of_plain_ones(mode):
    plain = tiny_model()
    checkpointed = copy.deepcopy(plain)
    apply_activation_checkpointing(checkpointed, mode)
    for model in (plain, checkpointed):
        model(*tokens()).backward()
    grads = dict(checkpointed.named_parameters())
    for name, p in plain.named_parameters():
        key = next(k for k in grads if k.replace("_checkpoint_wrapped_module.", "") == name)
        torch.testing.assert_close(grads[key].grad, p.grad, rtol=1e-6, atol=1e-7)


def test_selective_backward_recomputes_three_matmuls_per_block_and_never_attention():
    plain, selective = tiny_model(), tiny_model()
    apply_activation_checkpointing(selective, "selective")
    extra = backward_op_counts(selective) - backward_op_counts(plain)
    n_layers = TINY_ARGS["n_layers"]
    assert extra["aten.mm"] == n_layers * (MATMULS_PER_BLOCK // 2)
    assert not [op for op in extra if "scaled_dot_product" in op and "backward" not in op]


def test_full_checkpointing_recomputes_the_matmuls_and_attention():
    plain, full = tiny_model(), tiny_model()
    apply_activation_checkpointing(full, "full")
    extra = backward_op_counts(full) - backward_op_counts(plain)
    # every matmul but w2, whose output only feeds the residual add: the recompute stops once it has what it needs
    assert extra["aten.mm"] == TINY_ARGS["n_layers"] * (MATMULS_PER_BLOCK - 1)
    assert extra["aten._scaled_dot_product_flash_attention_for_cpu"] == TINY_ARGS["n_layers"]


def test_the_policy_saves_collectives_and_attention_whenever_they_run():
    policy = SelectivePolicy()
    for op in (
        torch.ops._c10d_functional.reduce_scatter_tensor.default,
        torch.ops._c10d_functional.all_gather_into_tensor.default,
        torch.ops._c10d_functional.all_reduce.default,
        torch.ops.aten._scaled_dot_product_flash_attention.default,
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
    ):
        assert policy(Ctx(False), op) == CheckpointPolicy.MUST_SAVE
        assert policy(Ctx(True), op) == CheckpointPolicy.MUST_SAVE


def test_the_policy_saves_every_other_matmul_and_decides_the_same_in_the_recompute():
    policy = SelectivePolicy()
    mm = torch.ops.aten.mm.default
    forward = [policy(Ctx(False), mm) for _ in range(MATMULS_PER_BLOCK)]
    recompute = [policy(Ctx(True), mm) for _ in range(MATMULS_PER_BLOCK)]
    save, again = CheckpointPolicy.MUST_SAVE, CheckpointPolicy.PREFER_RECOMPUTE
    assert forward == [save, again, save, again, save, again, save]
    assert recompute == forward
    assert policy(Ctx(False), torch.ops.aten.silu.default) == again


@pytest.mark.parametrize(
    ("setting", "device", "compiled"),
    [(None, "cuda", True), (None, "cpu", False), (True, "cpu", True), (False, "cuda", False), (True, "cuda", True)],
)
def test_compile_unset_means_on_for_cuda_and_off_elsewhere_and_a_value_forces_it(setting, device, compiled):
    assert resolve_compile(setting, device) is compiled


def test_training_compile_accepts_true_false_and_defaults_to_unset():
    from llmtrain_contract.sections import TrainingSection

    assert TrainingSection(steps=1, globalBatchSize=1).compile is None
    assert TrainingSection(steps=1, globalBatchSize=1, compile=True).compile is True
    assert TrainingSection(steps=1, globalBatchSize=1, compile=False).compile is False


def test_under_tensor_parallelism_selective_backward_repeats_no_collective_and_full_backward_does(tmp_path):
    inputs, targets = tokens()
    spec = dict(args=TINY_ARGS, inputs=inputs.tolist(), targets=targets.tolist())
    counts = {
        layout: run_scenario("backward_collectives", layout, tmp_path, **spec)["counts"]
        for layout in ("tp2", "tp2_selective_ac", "tp2_full_ac")
    }
    assert counts["tp2_selective_ac"] == counts["tp2"], counts
    assert sum(counts["tp2_full_ac"].values()) > sum(counts["tp2"].values())
