"""Dynamic loss scaling for fp16 that works on sharded gradients.

fp16 gradients underflow unless the loss is multiplied by a large scale before backward. The scale is lowered
when a step overflows and raised after `growth_interval` clean steps. Whether a step overflowed is decided by the
trainer from the global gradient norm and an all-reduced flag, so every rank (each holding different shards)
skips the same steps. bf16 and fp32 runs use scale 1 and never change it.
"""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor


class LossScaler:
    def __init__(
        self,
        enabled: bool,
        init_scale: float = 2.0**16,
        growth_interval: int = 2000,
        backoff: float = 0.5,
        growth: float = 2.0,
        min_scale: float = 1.0,
    ):
        self.enabled = enabled
        self.scale = init_scale if enabled else 1.0
        self.growth_interval = growth_interval
        self.backoff = backoff
        self.growth = growth
        self.min_scale = min_scale
        self.clean_steps = 0
        self.skipped_steps = 0

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale if self.enabled else loss

    def unscale_(self, params: list[torch.nn.Parameter]) -> None:
        """Divide this rank's (local shards of the) gradients by the scale, in place."""
        if not self.enabled:
            return
        grads = [_local(p.grad) for p in params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, 1.0 / self.scale)

    def update(self, found_nonfinite: bool) -> None:
        """After each step: back off on overflow (the step was skipped), grow after a clean stretch."""
        if found_nonfinite:
            self.skipped_steps += 1
            self.clean_steps = 0
            if self.enabled:
                self.scale = max(self.scale * self.backoff, self.min_scale)
            return
        self.clean_steps += 1
        if self.enabled and self.clean_steps >= self.growth_interval:
            self.scale *= self.growth
            self.clean_steps = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "clean_steps": self.clean_steps, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.clean_steps = int(state["clean_steps"])
        self.skipped_steps = int(state["skipped_steps"])


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t
