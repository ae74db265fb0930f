"""Image ViT-B/16 with a CLS token, applied per frame (the image-to-video setting of ST-Adapter and DualPath).

A clip (B, 3, T, H, W) runs as B·T images; the pooled feature is the mean over frames of the last block's CLS
token, then the final LayerNorm (CLIP's ``ln_post`` placement). Keys follow timm's ViT layout.

Two variants by config: ``vit-b16`` (timm / IN-21K: GELU, patch conv with bias, no pre-norm, LayerNorm eps 1e-6)
and ``clip-vit-b16`` (OpenAI CLIP's visual tower: QuickGELU, patch conv without bias, ``ln_pre`` after the
position embedding, eps 1e-5; its weights load with :mod:`vpetl.backbones.clip`). CLIP's final ``proj``
(768→512, to the joint image-text space) is not part of the backbone: the video heads of ST-Adapter and DualPath
read the ``ln_post`` output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vpetl.backbones.base import Backbone
from vpetl.backbones.hooks import AdaptableBlock, BlockContext
from vpetl.backbones.layers import ViTBlock, init_weights_vit
from vpetl.errors import InvalidInput
from vpetl.protocol import InputSpec

Tensor = torch.Tensor


@dataclass
class ImageViTConfig:
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    img_size: int = 224
    in_chans: int = 3
    norm_eps: float = 1e-6
    pre_norm: bool = False  # CLIP's ln_pre
    act: str = "gelu"  # "quick_gelu" for CLIP
    patch_bias: bool = True  # CLIP's conv1 has no bias


class PatchEmbed2D(nn.Module):
    def __init__(self, patch: int, in_chans: int, dim: int, bias: bool = True) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B·T, HW, C)


class FrameViT(Backbone):
    family = "image_vit"

    def __init__(self, config: ImageViTConfig, input_spec: InputSpec, name: str = "vit") -> None:
        super().__init__()
        self.config, self.input_spec, self.name = config, input_spec, name
        c = config
        self.num_features = c.embed_dim
        grid = c.img_size // c.patch_size
        self.patch_embed = PatchEmbed2D(c.patch_size, c.in_chans, c.embed_dim, bias=c.patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, c.embed_dim))
        self.norm_pre = nn.LayerNorm(c.embed_dim, eps=c.norm_eps) if c.pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(
            [
                ViTBlock(c.embed_dim, c.num_heads, c.mlp_ratio, c.norm_eps, qkv_layout="fused", act=c.act)
                for _ in range(c.depth)
            ]
        )
        self.norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps)
        self.apply(init_weights_vit)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)

    def adaptable_blocks(self) -> list[AdaptableBlock]:
        return list(self.blocks)

    def check_input(self, x: Tensor) -> None:
        super().check_input(x)
        p = self.config.patch_size
        if x.shape[3] % p or x.shape[4] % p:
            raise InvalidInput(f"{self.name}: height and width ({x.shape[3]}×{x.shape[4]}) must be multiples of {p}")

    def position_embedding(self, gh: int, gw: int) -> Tensor:
        """(1, 1 + gh·gw, C): the learned grid resized bicubically when the frame size differs from training."""
        grid = self.config.img_size // self.config.patch_size
        if (gh, gw) == (grid, grid):
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        patch_pos = patch_pos.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)  # (1, C, g, g)
        patch_pos = F.interpolate(patch_pos, size=(gh, gw), mode="bicubic", align_corners=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)  # (1, gh·gw, C)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def forward_tokens(self, x: Tensor, tag: str | None = None) -> Tensor:
        """(B, 3, T, H, W) -> per-frame tokens (B·T, 1 + HW/p², C) after the last block."""
        self.check_input(x)
        b, _, t, h, w = x.shape
        p = self.config.patch_size
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, 3, h, w)  # (B·T, 3, H, W), frames of a clip contiguous
        tokens = self.patch_embed(frames)  # (B·T, HW, C)
        tokens = torch.cat([self.cls_token.expand(b * t, -1, -1), tokens], dim=1)  # (B·T, 1 + HW, C)
        tokens = self.norm_pre(tokens + self.position_embedding(h // p, w // p))
        for i, block in enumerate(self.blocks):
            ctx = BlockContext(
                batch_size=b,
                rows_per_sample=t,
                grid=(t, h // p, w // p),
                num_prefix_tokens=1,
                frames=t,
                tag=tag,
                block_index=i,
            )
            tokens = block(tokens, ctx)
        return tokens

    def forward(self, x: Tensor, tag: str | None = None) -> Tensor:
        """(B, 3, T, H, W) -> (B, C): mean over frames of the CLS token, then the final LayerNorm."""
        self.check_input(x)  # before reading x.shape: a non-tensor or 4-D input gets InvalidInput, not a crash
        b, t = x.shape[0], x.shape[2]
        cls = self.forward_tokens(x, tag)[:, 0]  # (B·T, C)
        return self.norm(cls.reshape(b, t, -1).mean(dim=1))  # (B, C)

    def token_info(self, frames: int, size: int) -> dict[str, Any]:
        g = size // self.config.patch_size
        return {
            "grid": [frames, g, g],
            "tokens": frames * (1 + g * g),
            "attention_rows_per_clip": frames,
            "tokens_per_attention": 1 + g * g,
        }

    def param_breakdown(self) -> dict[str, int]:
        out = {
            "patch_embed": sum(p.numel() for p in self.patch_embed.parameters()),
            "cls_token + pos_embed": self.cls_token.numel() + self.pos_embed.numel(),
        }
        if isinstance(self.norm_pre, nn.LayerNorm):
            out["norm_pre"] = sum(p.numel() for p in self.norm_pre.parameters())
        for i, block in enumerate(self.blocks):
            out[f"blocks.{i}"] = sum(p.numel() for k, p in block.named_parameters() if not k.startswith("adapters."))
        out["norm"] = sum(p.numel() for p in self.norm.parameters())
        return out
