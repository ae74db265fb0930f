"""Masked-video pretraining (VideoMAE's objective) for the demo backbone: learn from clips without labels.

VideoMAE (Tong et al., 2022) masks most of a clip's tokens with *tube* masking (the same spatial positions in
every time slice, so a masked patch cannot be copied from the frame before), runs the encoder on the visible
tokens only, and has a small decoder reconstruct each masked tubelet's pixels, normalised per tubelet
("norm_pix_loss"); the loss is the mean squared error over masked tubelets only. This module is that objective
for :class:`vpetl.backbones.video_vit.VideoViT` (the ``vpetl-demo`` backbone and any VideoMAE-layout ViT):
``vpetl pretrain --objective mae``. The decoder is dropped afterwards; the backbone file is the encoder.

One addition for a conv stem (``vpetl-demo``): the stem's 3×3 convolutions would let a visible token see a few
pixels of its masked neighbours, so masked tubes are zeroed in the input (the normalised clip's mean) before the
stem runs; with a linear patchify that changes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.clips import ClipTensors
from training.pretrain import tubelets
from training.trainer import TrainConfig, fit, resolve_device
from vpetl.backbones.hooks import BlockContext
from vpetl.backbones.layers import ViTBlock, init_weights_vit, sincos_position_table
from vpetl.backbones.video_vit import VideoViT

Tensor = torch.Tensor

__all__ = ["MaskedVideoAutoencoder", "MaeConfig", "tube_mask", "tubelet_targets", "fit_mae"]


@dataclass(frozen=True)
class MaeConfig:
    """The decoder and the masking. VideoMAE masks 90% of a 14×14 grid; the demo's grid is 4×4, where 90% would
    leave one or two patches, so the default keeps a quarter of the positions (4 of 16)."""

    mask_ratio: float = 0.75
    decoder_dim: int = 64
    decoder_depth: int = 1
    decoder_heads: int = 2


def tube_mask(batch: int, grid: tuple[int, int, int], ratio: float,
              generator: torch.Generator | None = None) -> Tensor:
    """(B, N) bool, True = masked: per clip, ``round(ratio · H'W')`` random spatial positions, masked in every one
    of the T' time slices (N = T'·H'·W', t-major token order as in the ViT)."""
    t, h, w = grid
    per_slice = h * w
    masked = min(max(round(ratio * per_slice), 1), per_slice - 1)  # at least one token hidden and one seen
    scores = torch.rand(batch, per_slice, generator=generator)
    hidden = torch.zeros(batch, per_slice, dtype=torch.bool)
    hidden.scatter_(1, scores.argsort(dim=1)[:, :masked], True)  # (B, H'W')
    return hidden.repeat(1, t)  # (B, T'·H'W'): the same positions in every time slice


def tubelet_targets(x: Tensor, patch: tuple[int, int, int], eps: float = 1e-6) -> Tensor:
    """(B, 3, T, H, W) clips -> (B, N, pt·ph·pw·3) tubelet pixels, each tubelet normalised to zero mean and unit
    variance over its own pixels (VideoMAE's ``norm_pix_loss``; unbiased variance, as its code)."""
    pixels = tubelets(x.float(), patch)  # (B, N, P)
    mean = pixels.mean(dim=-1, keepdim=True)
    var = pixels.var(dim=-1, unbiased=True, keepdim=True)
    return (pixels - mean) / (var + eps).sqrt()


class MaskedVideoAutoencoder(nn.Module):
    """A VideoViT encoder (trained) + a small decoder (dropped after pretraining); ``forward`` returns the loss."""

    def __init__(self, backbone: VideoViT, config: MaeConfig | None = None) -> None:
        super().__init__()
        if not isinstance(backbone, VideoViT):
            raise TypeError(f"masked-video pretraining needs a VideoViT backbone, got {type(backbone).__name__}")
        self.backbone = backbone
        self.config = config = config or MaeConfig()
        c = backbone.config
        self.patch = (c.tubelet_size, c.patch_size, c.patch_size)
        self.encoder_norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps)
        self.decoder_embed = nn.Linear(c.embed_dim, config.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_dim))
        self.decoder_blocks = nn.ModuleList(
            ViTBlock(config.decoder_dim, config.decoder_heads, 4.0, c.norm_eps) for _ in range(config.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(config.decoder_dim, eps=c.norm_eps)
        self.decoder_pred = nn.Linear(config.decoder_dim, 3 * math.prod(self.patch))
        for module in (self.encoder_norm, self.decoder_embed, self.decoder_blocks, self.decoder_norm,
                       self.decoder_pred):
            module.apply(init_weights_vit)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def encode_visible(self, x: Tensor, hidden: Tensor) -> Tensor:
        """(B, 3, T, H, W) clips and (B, N) mask -> (B, N_visible, C) encoder outputs of the visible tokens."""
        bb = self.backbone
        bb.check_input(x)
        grid = bb.grid(*x.shape[2:])
        t, h, w = grid
        pt, ph, pw = self.patch
        # zero the masked tubes' pixels, so that a conv stem cannot see into them from a visible neighbour
        keep = (~hidden).view(-1, 1, t, 1, h, 1, w, 1).to(x.dtype)  # (B, 1, T', 1, H', 1, W', 1)
        b = x.shape[0]
        x = (x.view(b, 3, t, pt, h, ph, w, pw) * keep).view_as(x)  # (B, 3, T, H, W), masked tubes at 0
        tokens = bb.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, C), t-major
        tokens = tokens + bb.position_table(tokens.shape[1], tokens.device, tokens.dtype)
        visible = tokens[~hidden].view(b, -1, tokens.shape[-1])  # (B, N_visible, C): same count per clip
        for i, block in enumerate(bb.blocks):
            # the grid describes the full clip; no adapter is attached during pretraining, so nothing reads it
            ctx = BlockContext(batch_size=b, rows_per_sample=1, grid=grid, frames=t, block_index=i)
            visible = block(visible, ctx)
        return self.encoder_norm(visible)

    def forward(self, x: Tensor, hidden: Tensor) -> Tensor:
        """Mean squared error over the masked tubelets' normalised pixels (a scalar)."""
        b, n = hidden.shape
        encoded = self.decoder_embed(self.encode_visible(x, hidden))  # (B, N_visible, D)
        full = self.mask_token.expand(b, n, -1).to(encoded.dtype).clone()  # (B, N, D); bf16 under autocast
        full[~hidden] = encoded.reshape(-1, encoded.shape[-1])
        full = full + sincos_position_table(n, full.shape[-1]).to(full.device, full.dtype)
        grid = self.backbone.grid(*x.shape[2:])
        for i, block in enumerate(self.decoder_blocks):
            full = block(full, BlockContext(batch_size=b, rows_per_sample=1, grid=grid, frames=grid[0], block_index=i))
        pred = self.decoder_pred(self.decoder_norm(full[hidden]))  # (B·N_masked, P)
        target = tubelet_targets(x, self.patch)[hidden]  # (B·N_masked, P)
        return F.mse_loss(pred.float(), target)


@torch.no_grad()
def _val_loss(model: MaskedVideoAutoencoder, val: ClipTensors, config: TrainConfig, ratio: float,
              device: torch.device) -> float:
    model.eval()
    generator = torch.Generator().manual_seed(config.seed + 1)  # the same masks for every evaluation
    total, count = 0.0, 0
    for x, _ in val.batches(config.batch_size):
        x = x[:, 0].to(device)  # (B, C, T, H, W): the one validation view
        hidden = tube_mask(x.shape[0], model.backbone.grid(*x.shape[2:]), ratio, generator).to(device)
        total, count = total + float(model(x, hidden)) * x.shape[0], count + x.shape[0]
    model.train()
    return total / max(count, 1)


def fit_mae(model: MaskedVideoAutoencoder, train: ClipTensors, val: ClipTensors, config: TrainConfig, *,
            progress: bool = True, title: str = "pretrain (masked video)") -> dict[str, Any]:
    """Train every parameter of ``model`` on masked reconstruction with :func:`training.trainer.fit`'s loop
    (AdamW, warmup + cosine), a fresh tube mask per clip and step.

    Returns metrics: ``val_loss`` (masked reconstruction loss on ``val`` with fixed masks; 1.0 is what predicting
    each tubelet's mean would score), ``initial_val_loss`` (the same before training), ``train_loss`` (last epoch's
    mean), ``steps``, ``train_time_s``.
    """
    device = resolve_device(config.device)
    model.to(device)
    ratio = model.config.mask_ratio
    generator = torch.Generator().manual_seed(config.seed)

    def masked_loss(x: Tensor, _labels: Tensor) -> Tensor:
        hidden = tube_mask(x.shape[0], model.backbone.grid(*x.shape[2:]), ratio, generator).to(x.device)
        return model(x, hidden)

    initial = _val_loss(model, val, config, ratio, device)
    metrics, _ = fit(model, dict(model.named_parameters()), train, None, config, spec=train.spec, progress=progress,
                     title=title, objective=masked_loss)
    return {"val_loss": _val_loss(model, val, config, ratio, device), "initial_val_loss": initial,
            "train_loss": metrics["train_loss"], "steps": metrics["steps"], "train_time_s": metrics["train_time_s"]}
