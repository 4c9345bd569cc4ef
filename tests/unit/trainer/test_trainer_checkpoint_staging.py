"""Async saves stage the state through one stager per run: pinned memory and a background copy on CUDA, a plain
copy on CPU, buffers reused from one save to the next; what is saved still loads back exactly."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from llmtrain_trainer.checkpoint import Checkpointer, staging_options
from torch import nn


def test_on_cuda_staging_pins_memory_and_copies_in_the_background():
    options = staging_options("cuda")
    assert options.use_pinned_memory and options.use_async_staging and options.use_non_blocking_copy
    assert not options.use_shared_memory  # only DCP's process-based writer needs it; ours is a thread


def test_on_cpu_staging_is_a_plain_copy():
    options = staging_options("cpu")
    assert not (options.use_pinned_memory or options.use_async_staging or options.use_non_blocking_copy)
    assert not options.use_shared_memory


@pytest.fixture
def one_rank():
    """A one-process gloo group, as the trainer has under `python -m llmtrain_trainer`."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def save(checkpointer: Checkpointer, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    checkpointer.save(step, model, optimizer, {"step": step})
    checkpointer.wait_for_staging()  # what the trainer does before its next optimizer step
    checkpointer.finalize()


def test_async_saves_reuse_the_staging_buffers_and_load_back_exactly(one_rank, tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(16, 8)
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)
    checkpointer = Checkpointer(str(tmp_path), keep=2, async_save=True, rank=0, log=lambda *a, **k: None)
    save(checkpointer, 1, model, optimizer)
    buffers_after_first = len(checkpointer._stager._state_dict_stager._cached_storage_mapping)
    with torch.no_grad():
        model.weight.add_(1.0)
    save(checkpointer, 2, model, optimizer)
    assert len(checkpointer._stager._state_dict_stager._cached_storage_mapping) == buffers_after_first > 0
    restored = nn.Linear(16, 8)
    state = checkpointer.load_latest(restored, torch.optim.AdamW(restored.parameters(), fused=True))
    checkpointer.close()
    assert state == {"step": 2}
    for saved, loaded in zip(model.parameters(), restored.parameters(), strict=True):
        assert torch.equal(saved, loaded)
