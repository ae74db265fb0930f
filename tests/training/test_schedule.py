"""The learning-rate rules: linear scaling with the effective batch, per-step warmup, half-cosine to zero."""

from __future__ import annotations

import math

import pytest
import torch

from training.schedule import WarmupCosine, lr_at, scaled_lr
from training.trainer import TrainConfig


def test_warmup_is_linear_from_near_zero_to_the_peak() -> None:
    peak, warmup, total = 0.1, 10, 100
    lrs = [lr_at(i, total, peak, warmup) for i in range(total)]
    assert lrs[0] == pytest.approx(peak / warmup)  # small, not zero: the first step is not wasted
    assert lrs[warmup - 1] == pytest.approx(peak)  # the peak at the end of warmup
    steps = [lrs[i + 1] - lrs[i] for i in range(warmup - 1)]
    assert all(s == pytest.approx(peak / warmup) for s in steps)  # linear


def test_cosine_decays_monotonically_to_zero_at_the_last_step() -> None:
    peak, warmup, total = 0.1, 5, 50
    lrs = [lr_at(i, total, peak, warmup) for i in range(total)]
    assert lrs[warmup] == pytest.approx(peak)
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1 :], strict=False))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    middle = warmup + (total - warmup - 1) / 2  # half way through the decay: half the peak
    assert lr_at(int(middle), total, peak, warmup) == pytest.approx(
        0.5 * peak * (1 + math.cos(math.pi * (int(middle) - warmup) / (total - warmup - 1))))
    assert lr_at(total - 1, total, peak, warmup, min_lr=0.01) == pytest.approx(0.01)


def test_no_warmup_and_degenerate_lengths() -> None:
    assert lr_at(0, 10, 0.5) == pytest.approx(0.5)
    assert lr_at(0, 1, 0.5) == pytest.approx(0.5)
    assert lr_at(0, 3, 0.5, warmup_steps=3) == pytest.approx(0.5 / 3)
    with pytest.raises(ValueError):
        lr_at(0, 0, 0.1)


def test_lr_scales_linearly_with_the_effective_batch() -> None:
    assert scaled_lr(0.1, 16) == pytest.approx(0.00625)  # the V-PETL README run (PETL_SPEC §1.5)
    assert scaled_lr(0.1, 1024) == pytest.approx(0.4)  # AdaptFormer's 64 GPUs × 16 (§2.6)
    base = TrainConfig(batch_size=16, base_lr=0.1).peak_lr()
    assert TrainConfig(batch_size=32, base_lr=0.1).peak_lr() == pytest.approx(2 * base)
    assert TrainConfig(batch_size=16, accumulate=4, base_lr=0.1).peak_lr() == pytest.approx(4 * base)
    assert TrainConfig(batch_size=16, lr=0.3).peak_lr() == 0.3  # an absolute lr wins
    assert TrainConfig(optimizer="adamw", batch_size=16).peak_lr() == pytest.approx(1e-3)


def test_schedule_writes_every_param_group() -> None:
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2, 2))]
    opt = torch.optim.SGD([{"params": params[:1]}, {"params": params[1:], "lr_scale": 0.5}], lr=1.0)
    schedule = WarmupCosine(opt, total_steps=10, peak_lr=0.2, warmup_steps=2)
    assert schedule.set(1) == pytest.approx(0.2)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.2, 0.1])
