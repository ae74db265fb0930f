"""Evaluation: top-1 / top-5 accuracy and loss, with multi-view testing.

Multi-view testing (PETL_SPEC §1.5): each video is fed as ``V = num_clips × num_crops`` views and its logits are
averaged over the views before the argmax and the loss, so a batch of shape (B, V, C, T, H, W) yields one
prediction per video. A batch of shape (B, C, T, H, W) is the single-view case.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


@dataclass
class EvalResult:
    """Accuracy over a split. ``top5`` uses ``k = min(5, num_classes)``."""

    top1: float
    top5: float
    loss: float
    count: int
    views: int

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def topk_correct(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many rows of ``logits`` (B, K) have their label among the top-k scores, for each k (capped at K)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices  # (B, kmax)
    hits = top == labels[:, None]  # (B, kmax)
    return [int(hits[:, : min(k, logits.shape[1])].any(dim=1).sum()) for k in ks]


def autocast(device: torch.device, amp: str | None):  # noqa: ANN201 - a context manager
    """bf16 / fp16 autocast on CUDA, bf16 on CPU when asked for (:func:`training.trainer.resolve_amp`); else a
    no-op (fp32)."""
    if amp in (None, "none", "fp32") or device.type not in ("cuda", "cpu"):
        return nullcontext()
    if device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16) if amp == "bf16" else nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def video_logits(model: nn.Module, x: Tensor, *, sample_dims: int = 4, max_rows: int | None = None) -> Tensor:
    """Logits per video: (B, C, T, H, W) -> (B, K); (B, V, C, T, H, W) -> views averaged -> (B, K).

    ``sample_dims`` is the rank of one model input without the batch (4 for clips; 1 for cached features, where
    the model is a head). ``max_rows`` bounds how many views go through the model at once.
    """
    if x.dim() == sample_dims + 1:
        return model(x).float()
    b, v = x.shape[:2]
    flat = x.reshape(b * v, *x.shape[2:])  # (B·V, C, T, H, W), views of a video contiguous
    step = max_rows or flat.shape[0]
    logits = torch.cat([model(flat[i : i + step]).float() for i in range(0, flat.shape[0], step)])
    return logits.reshape(b, v, -1).mean(dim=1)  # (B, K)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    device: torch.device | str = "cpu",
    amp: str | None = None,
    sample_dims: int = 4,
    max_rows: int | None = 64,
) -> EvalResult:
    """Top-1, top-5 and mean cross-entropy of ``model`` over ``batches`` of ``(clips, labels)``.

    The model is put in eval mode and restored to its previous mode afterwards.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    n = correct1 = correct5 = 0
    loss_sum, views = 0.0, 1
    try:
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device)
            views = x.shape[1] if x.dim() == sample_dims + 2 else 1
            with autocast(device, amp):
                logits = video_logits(model, x, sample_dims=sample_dims, max_rows=max_rows)
            loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            c1, c5 = topk_correct(logits.float(), y)  # bf16 logits tie more often
            correct1, correct5, n = correct1 + c1, correct5 + c5, n + int(y.shape[0])
    finally:
        model.train(was_training)
    if n == 0:
        return EvalResult(top1=0.0, top5=0.0, loss=float("nan"), count=0, views=views)
    return EvalResult(top1=correct1 / n, top5=correct5 / n, loss=loss_sum / n, count=n, views=views)
