"""Batches prepared ahead of the step on a background thread, so the step never waits for the data.

The thread draws the global batches of the next steps (a pure function of the step: BatchSampler.batch_at), turns
them into tensors (pinned when CUDA is available, so the copy to the GPU can be asynchronous) and keeps at most
`depth` of them in a bounded queue. The main thread takes them in order, copies them to the device with
non_blocking=True and only then advances the sampler's position, so a checkpoint saves the position of the batches
consumed, never of those prepared ahead: resume stays exact. An exception in the thread is raised again by the
next `next_batch()`; `close()` stops the thread and waits for it.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import torch

from .data import BatchSampler

MicroBatch = tuple[torch.Tensor, torch.Tensor]  # (inputs, targets), each (micro_batch_size, seq_len)
PUT_POLL_S = 0.1  # how often a thread blocked on a full queue checks whether it should stop


@dataclass(frozen=True)
class PreparedBatch:
    step: int  # the sampler position this batch belongs to
    inputs: torch.Tensor  # host, pinned when CUDA is available
    targets: torch.Tensor


@dataclass(frozen=True)
class WorkerFailure:
    error: BaseException


class BatchPrefetcher:
    """Hands out this rank's micro-batches on the device, step after step, prepared `depth` steps ahead."""

    def __init__(self, sampler: BatchSampler, device: torch.device, micro_batch_size: int, depth: int = 2):
        self.sampler = sampler
        self.device = device
        self.micro_batch_size = micro_batch_size
        self.depth = depth
        self.pin = torch.cuda.is_available()
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def next_batch(self) -> list[MicroBatch]:
        """The batch at the sampler's position, on the device, cut into micro-batches; advances the position."""
        prepared = self._take()
        if prepared.step != self.sampler.step:  # the position was moved (a resume): prepare from there again
            self.close()
            prepared = self._take()
        self.sampler.step += 1
        return to_device_micro_batches(prepared.inputs, prepared.targets, self.device, self.micro_batch_size)

    def close(self) -> None:
        """Stop the thread and drop what it prepared; the next `next_batch()` starts again at the position."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self._queue = queue.Queue(maxsize=self.depth)
        self._stop = threading.Event()

    def _take(self) -> PreparedBatch:
        if self._thread is None:
            self._start(self.sampler.step)
        item = self._queue.get()
        if isinstance(item, WorkerFailure):
            self.close()
            raise item.error
        return item

    def _start(self, first_step: int) -> None:
        self._thread = threading.Thread(
            target=self._prepare_from, args=(first_step, self._queue, self._stop), name="batch-prefetch", daemon=True
        )
        self._thread.start()

    def _prepare_from(self, step: int, out: queue.Queue, stop: threading.Event) -> None:
        """The thread: prepare step after step until told to stop; a failure is handed to the main thread."""
        try:
            while not stop.is_set():
                if put_unless_stopped(out, self._prepare(step), stop):
                    step += 1
        except BaseException as error:  # every failure must reach the main thread
            put_unless_stopped(out, WorkerFailure(error), stop)

    def _prepare(self, step: int) -> PreparedBatch:
        inputs, targets = (torch.from_numpy(rows) for rows in self.sampler.batch_at(step))
        if self.pin:
            inputs, targets = inputs.pin_memory(), targets.pin_memory()
        return PreparedBatch(step, inputs, targets)


def put_unless_stopped(out: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Block while the queue is full, but give up (False) once `stop` is set."""
    while not stop.is_set():
        try:
            out.put(item, timeout=PUT_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def to_device_micro_batches(
    inputs: torch.Tensor, targets: torch.Tensor, device: torch.device, micro_batch_size: int
) -> list[MicroBatch]:
    """(inputs, targets) on the device, asynchronously from pinned memory, cut into micro-batches."""
    on_device = (rows.to(device, non_blocking=True).split(micro_batch_size) for rows in (inputs, targets))
    return list(zip(*on_device, strict=True))
