"""Atomic, sharded checkpoints with torch.distributed.checkpoint (DCP).

Layout under checkpoint.dir (a directory every rank can write: shared storage for multi-node jobs):

    step-00000100/              a complete checkpoint (only ever appears by an atomic rename)
      .metadata, __0_0.distcp…  DCP: model and optimizer, sharded, loadable on another number of ranks
      trainer-rank00000.pt      per rank: step, data position, loss scaler, RNG states
      model-args.json           the model's shape (ModelArgs), when the trainer passes it: offline export reads it
      .complete                 written by rank 0 once every rank has finished, just before the rename
    step-00000200.tmp/          a save in progress (or one a crash interrupted): never loaded, removed at start

A checkpoint is loaded only if its name has no .tmp suffix and it holds .complete, so a half-written checkpoint
is never used. The newest complete one is resumed automatically.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.state_dict_saver import AsyncSaveResponse

COMPLETE_MARKER = ".complete"
_STEP_DIR = re.compile(r"^step-(\d{8})$")
_TMP_DIR = re.compile(r"^step-(\d{8})\.tmp$")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and (child / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(root: Path) -> tuple[int, Path] | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def remove_incomplete(root: Path) -> list[Path]:
    """Delete leftovers of interrupted saves (rank 0, at start, before anyone saves): every step-N.tmp (even one
    whose marker was written just before a crash stopped the rename) and every step-N without its marker."""
    removed = []
    if root.is_dir():
        for child in root.iterdir():
            unmarked = _STEP_DIR.match(child.name) and not (child / COMPLETE_MARKER).is_file()
            if child.is_dir() and (unmarked or _TMP_DIR.match(child.name)):
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
    return removed


def prune(root: Path, keep: int) -> None:
    for _, path in complete_checkpoints(root)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def staging_options(device_type: str) -> StagingOptions:
    """How an async save copies the state off the training tensors before writing it in the background.

    On CUDA: into pinned host memory, with non-blocking copies on a side stream while the next step computes (the
    trainer waits for the copy only before the optimizer changes the parameters). On CPU the copy is a plain,
    synchronous one (there is nothing to pin or overlap). Either way the stager keeps its buffers and reuses them
    for every later save, instead of allocating the whole state again. Shared memory is only for DCP's
    process-based writer; ours is a thread.
    """
    on_gpu = device_type == "cuda"
    return StagingOptions(
        use_pinned_memory=on_gpu, use_shared_memory=False, use_async_staging=on_gpu, use_non_blocking_copy=on_gpu
    )


@dataclass
class PendingSave:
    step: int
    tmp: Path
    future: object | None  # an async save's future; None once written
    started: float
    staged: object | None = None  # a future done once the state is copied off the training tensors (CUDA)


class Checkpointer:
    """Saves and loads the training state; all methods are collective (every rank calls them in step)."""

    def __init__(
        self, root: str, *, keep: int, async_save: bool, rank: int, log, model_args=None, device_type: str = "cpu"
    ):
        self.root = Path(root)
        self.model_args = model_args  # a ModelArgs written into each step directory by rank 0
        self.keep = keep
        self.async_save = async_save
        self.rank = rank
        self.log = log
        self.pending: PendingSave | None = None
        # async saves talk on their own gloo group so they never interleave with training collectives
        self._async_group = dist.new_group(backend="gloo") if async_save else None
        self._stager = DefaultStager(staging_options(device_type)) if async_save else None
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            for path in remove_incomplete(self.root):
                log("checkpoint_removed_incomplete", path=str(path))
        dist.barrier()

    def save(self, step: int, model, optimizer, trainer_state: dict, *, force_sync: bool = False) -> float | None:
        """Write step-N.tmp; it becomes step-N when every rank is done: now (returns the seconds it took) or,
        for async saves, at the first step boundary where every rank reports its writes done."""
        self.wait()
        tmp = self.root / f"{step_dir_name(step)}.tmp"
        started = time.perf_counter()
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        tmp.mkdir(parents=True, exist_ok=True)
        torch.save(trainer_state, tmp / f"trainer-rank{self.rank:05d}.pt")
        if self.model_args is not None and self.rank == 0:
            from .hf_checkpoint import write_model_args

            write_model_args(tmp, self.model_args)
        if self.async_save and not force_sync:
            self.pending = self._start_async_save(step, tmp, state, started)
            return None
        dcp.save(state, checkpoint_id=str(tmp))
        self.pending = PendingSave(step, tmp, None, started)
        return self.finalize()

    def _start_async_save(self, step: int, tmp: Path, state: dict, started: float) -> PendingSave:
        """dcp.async_save through our stager (its buffers are reused save after save)."""
        response = dcp.async_save(
            state, checkpoint_id=str(tmp), process_group=self._async_group, async_stager=self._stager
        )
        if isinstance(response, AsyncSaveResponse):  # staging runs in the background (CUDA)
            return PendingSave(step, tmp, response.upload_completion, started, response.staging_completion)
        return PendingSave(step, tmp, response, started)

    def wait_for_staging(self) -> None:
        """Block until the pending async save has copied the state: call before the optimizer changes it."""
        pending = self.pending
        if pending is not None and pending.staged is not None:
            pending.staged.result()
            pending.staged = None

    def close(self) -> None:
        """Release the staging buffers (the pending save must be finalized first)."""
        if self._stager is not None:
            self._stager.close()
            self._stager = None

    def local_done(self) -> bool:
        """This rank has nothing left to write (the trainer all-reduces this before calling finalize)."""
        pending = self.pending
        return pending is None or pending.future is None or pending.future.done()

    def finalize(self) -> float | None:
        """Publish the pending checkpoint once every rank has written it; returns its save time in seconds."""
        pending = self.pending
        if pending is None:
            return None
        if pending.future is not None:
            pending.future.result()
        dist.barrier()
        if self.rank == 0:
            final = self.root / step_dir_name(pending.step)
            marker = {"step": pending.step, "world_size": dist.get_world_size(), "time": time.time()}
            (pending.tmp / COMPLETE_MARKER).write_text(json.dumps(marker))
            if final.exists():  # saved twice at one step (e.g. SIGTERM right after an interval save)
                shutil.rmtree(final)
            pending.tmp.rename(final)
            prune(self.root, self.keep)
        dist.barrier()
        self.pending = None
        seconds = time.perf_counter() - pending.started
        self.log("checkpoint_saved", checkpoint_step=pending.step, seconds=round(seconds, 3))
        return seconds

    def wait(self) -> None:
        if self.pending is not None:
            self.finalize()

    def load_latest(self, model, optimizer) -> dict | None:
        """Restore model and optimizer from the newest complete checkpoint; return this rank's trainer state."""
        found = latest_checkpoint(self.root)
        if found is None:
            return None
        step, path = found
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=str(path))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        own = path / f"trainer-rank{self.rank:05d}.pt"
        trainer_state = torch.load(own if own.exists() else path / "trainer-rank00000.pt", weights_only=False)
        self.log("checkpoint_loaded", checkpoint_step=step, path=str(path))
        return trainer_state
