"""Video ViT (VideoMAE-style): tubelet Conv3d patchify, fixed sin-cos positions, pre-norm blocks with separate
q/k/v (q_bias and v_bias; k has none), mean-pool over all tokens and ``fc_norm``. Paper: VideoMAE (Tong et al.,
2022); layout as in PETL_SPEC §2.4 / §3.1.

``pool="max"`` (the ``vpetl-demo`` backbone only) takes the per-channel maximum over tokens instead of the mean:
trained from scratch on a few thousand synthetic clips, a mean-pooled ViT stays at chance for minutes because the
one moving object covers a few of the 64 tokens and the background dominates the mean (measured: README,
"Demo backbone"); max pooling learns the same task within the demo's 4-minute budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vpetl.backbones.base import Backbone
from vpetl.backbones.hooks import AdaptableBlock, BlockContext
from vpetl.backbones.layers import ConvStem3D, PatchEmbed3D, ViTBlock, init_weights_vit, sincos_position_table
from vpetl.errors import InvalidInput
from vpetl.protocol import InputSpec

Tensor = torch.Tensor


@dataclass
class VideoViTConfig:
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    tubelet_size: int = 2
    in_chans: int = 3
    norm_eps: float = 1e-6  # VideoMAE original; HF transformers defaults to 1e-12
    fc_norm_eps: float = 1e-6
    pool: str = "mean"  # "mean" (VideoMAE) or "max" over all tokens, before fc_norm
    # stride-2 3×3 stem convolutions before the tubelet projection (``ConvStem3D``, ``vpetl-demo``); () is
    # VideoMAE's linear patchify
    stem_widths: tuple[int, ...] = ()


class VideoViT(Backbone):
    family = "video_vit"

    def __init__(self, config: VideoViTConfig, input_spec: InputSpec, name: str = "video-vit") -> None:
        super().__init__()
        self.config, self.input_spec, self.name = config, input_spec, name
        c = config
        if c.pool not in ("mean", "max"):
            raise ValueError(f"pool must be 'mean' or 'max', got {c.pool!r}")
        self.num_features = c.embed_dim
        patch = (c.tubelet_size, c.patch_size, c.patch_size)
        self.patch_embed: nn.Module = (
            ConvStem3D(patch, c.in_chans, c.embed_dim, tuple(c.stem_widths))
            if c.stem_widths
            else PatchEmbed3D(patch, c.in_chans, c.embed_dim)
        )
        self.blocks = nn.ModuleList(
            [
                ViTBlock(c.embed_dim, c.num_heads, c.mlp_ratio, c.norm_eps, qkv_layout="separate")
                for _ in range(c.depth)
            ]
        )
        self.fc_norm = nn.LayerNorm(c.embed_dim, eps=c.fc_norm_eps)
        self._pos_cache: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}
        self.apply(init_weights_vit)

    def adaptable_blocks(self) -> list[AdaptableBlock]:
        return list(self.blocks)

    def min_frames(self) -> int:
        return self.config.tubelet_size

    def check_input(self, x: Tensor) -> None:
        super().check_input(x)
        c = self.config
        t, h, w = x.shape[2:]
        if t % c.tubelet_size:
            raise InvalidInput(f"{self.name}: frames ({t}) must be a multiple of the tubelet size {c.tubelet_size}")
        if h % c.patch_size or w % c.patch_size:
            raise InvalidInput(
                f"{self.name}: height and width ({h}×{w}) must be multiples of the patch size {c.patch_size}"
            )

    def grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        c = self.config
        return frames // c.tubelet_size, height // c.patch_size, width // c.patch_size

    def position_table(self, num_tokens: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Regenerated for the actual token count (it is not a parameter); cached per (N, device, dtype)."""
        key = (num_tokens, device, dtype)
        if key not in self._pos_cache:
            self._pos_cache[key] = sincos_position_table(num_tokens, self.config.embed_dim).to(device, dtype)
        return self._pos_cache[key]

    def forward_tokens(self, x: Tensor, tag: str | None = None) -> Tensor:
        """(B, 3, T, H, W) -> tokens (B, N, C) after the last block, N = T/2 · H/16 · W/16."""
        self.check_input(x)
        grid = self.grid(*x.shape[2:])
        x = self.patch_embed(x)  # (B, C, T', H', W')
        x = x.flatten(2).transpose(1, 2)  # (B, N, C), t-major token order
        x = x + self.position_table(x.shape[1], x.device, x.dtype)
        b = x.shape[0]
        for i, block in enumerate(self.blocks):
            ctx = BlockContext(batch_size=b, rows_per_sample=1, grid=grid, frames=grid[0], tag=tag, block_index=i)
            x = block(x, ctx)
        return x

    def forward(self, x: Tensor, tag: str | None = None) -> Tensor:
        """(B, 3, T, H, W) -> pooled (B, C): mean (or max, ``config.pool``) over all tokens, then fc_norm."""
        return self.pool_tokens(self.forward_tokens(x, tag))

    def pool_tokens(self, tokens: Tensor) -> Tensor:
        """(B, N, C) tokens -> (B, C) features: mean (or max) over tokens, then fc_norm."""
        pooled = tokens.amax(dim=1) if self.config.pool == "max" else tokens.mean(dim=1)
        return self.fc_norm(pooled)

    def token_info(self, frames: int, size: int) -> dict[str, Any]:
        t, h, w = self.grid(frames, size, size)
        return {
            "grid": [t, h, w],
            "tokens": t * h * w,
            "attention_rows_per_clip": 1,
            "tokens_per_attention": t * h * w,
        }

    def param_breakdown(self) -> dict[str, int]:
        out = {"patch_embed": sum(p.numel() for p in self.patch_embed.parameters())}
        for i, block in enumerate(self.blocks):
            out[f"blocks.{i}"] = sum(p.numel() for k, p in block.named_parameters() if not k.startswith("adapters."))
        out["fc_norm"] = sum(p.numel() for p in self.fc_norm.parameters())
        out["encoder (patch_embed + blocks)"] = out["patch_embed"] + sum(
            v for k, v in out.items() if k.startswith("blocks.")
        )
        return out
