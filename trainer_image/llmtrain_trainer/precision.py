"""Dynamic loss scaling for fp16 that works on sharded gradients, kept on the device.

fp16 gradients underflow unless the loss is multiplied by a large scale before backward. The scale is lowered
when a step overflows and raised after `growth_interval` clean steps. Whether a step overflowed is decided by the
trainer from the global gradient norm and an all-reduced flag, so every rank (each holding different shards)
skips the same steps. bf16 and fp32 runs use scale 1 and never change it.

The scale and the counters are device tensors updated from the device's overflow flag, so a step never waits for
the host to learn whether it overflowed; `scale` and `skipped_steps` read them (a device sync: logging only).
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
        device: torch.device | str = "cpu",
    ):
        self.enabled = enabled
        self.growth_interval = growth_interval
        self.backoff = backoff
        self.growth = growth
        self.min_scale = min_scale
        self.scale_tensor = torch.tensor(init_scale if enabled else 1.0, device=device)
        self.clean_tensor = torch.zeros((), dtype=torch.int64, device=device)
        self.skipped_tensor = torch.zeros((), dtype=torch.int64, device=device)

    @property
    def scale(self) -> float:
        return self.scale_tensor.item()

    @property
    def clean_steps(self) -> int:
        return int(self.clean_tensor.item())

    @property
    def skipped_steps(self) -> int:
        return int(self.skipped_tensor.item())

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale_tensor if self.enabled else loss

    def unscale_(self, params: list[torch.nn.Parameter]) -> None:
        """Divide this rank's (local shards of the) gradients by the scale, in place."""
        if not self.enabled:
            return
        grads = [_local(p.grad) for p in params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, self.scale_tensor.reciprocal())

    def update(self, found_nonfinite: torch.Tensor | bool) -> None:
        """After each step, from the 0/1 overflow flag and without reading it: count a skip and back off on
        overflow, grow after a clean stretch."""
        skipped = torch.as_tensor(found_nonfinite, device=self.skipped_tensor.device).to(torch.int64)
        self.skipped_tensor.add_(skipped)
        clean = (self.clean_tensor + 1) * (1 - skipped)
        grow = clean >= self.growth_interval
        if self.enabled:
            backed_off = torch.clamp(self.scale_tensor * self.backoff, min=self.min_scale)
            grown = torch.where(grow, self.scale_tensor * self.growth, self.scale_tensor)
            self.scale_tensor.copy_(torch.where(skipped > 0, backed_off, grown))
        self.clean_tensor.copy_(torch.where(grow & self.enabled, 0, clean))

    def state_dict(self) -> dict:
        return {"scale": self.scale, "clean_steps": self.clean_steps, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        self.scale_tensor.fill_(float(state["scale"]))
        self.clean_tensor.fill_(int(state["clean_steps"]))
        self.skipped_tensor.fill_(int(state["skipped_steps"]))


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t
