"""Learning-rate rules of the V-PETL / AdaptFormer recipe (PETL_SPEC §1.5, §2.6).

- The peak rate scales linearly with the effective batch: ``lr = base_lr · effective_batch / 256``
  (effective batch = batch size × gradient-accumulation steps × devices).
- Per optimiser step (not per epoch): linear warmup from ~0 to the peak over ``warmup_steps``, then a half-cosine
  from the peak down to ``min_lr`` at the last step.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer


def scaled_lr(base_lr: float, effective_batch: int, reference_batch: int = 256) -> float:
    """The linear scaling rule: ``base_lr · effective_batch / reference_batch``."""
    if effective_batch < 1:
        raise ValueError(f"effective_batch must be >= 1, got {effective_batch}")
    return base_lr * effective_batch / reference_batch


def lr_at(step: int, total_steps: int, peak_lr: float, warmup_steps: int = 0, min_lr: float = 0.0) -> float:
    """The rate used for optimiser step ``step`` (0-based) of ``total_steps``.

    Warmup: step ``i < warmup_steps`` gets ``peak · (i + 1) / warmup_steps``; the first step is small but not 0
    (a zero first step would waste it), and the last warmup step reaches the peak exactly.
    Then a half-cosine over the remaining steps: the first step after warmup is at the peak and the last step
    (``total_steps - 1``) is at ``min_lr`` exactly.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup_steps = max(0, min(warmup_steps, total_steps))
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 1:
        return peak_lr if decay_steps == 1 and warmup_steps == 0 else min_lr
    progress = min(max(step - warmup_steps, 0) / (decay_steps - 1), 1.0)  # 0 at the first decay step, 1 at the last
    return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class WarmupCosine:
    """Sets the rate of every parameter group before each optimiser step (``lr_scale`` per group is honoured).

    Usage::

        schedule = WarmupCosine(optimizer, total_steps, peak_lr, warmup_steps)
        for step in range(total_steps):
            lr = schedule.set(step)
            ...; optimizer.step()
    """

    def __init__(
        self, optimizer: Optimizer, total_steps: int, peak_lr: float, warmup_steps: int = 0, min_lr: float = 0.0
    ) -> None:
        self.optimizer = optimizer
        self.total_steps = total_steps
        self.peak_lr = peak_lr
        self.warmup_steps = warmup_steps
        self.min_lr = min_lr

    def lr(self, step: int) -> float:
        return lr_at(step, self.total_steps, self.peak_lr, self.warmup_steps, self.min_lr)

    def set(self, step: int) -> float:
        """Write the rate for ``step`` into the optimiser and return it."""
        lr = self.lr(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr
