"""ST-Adapter (Pan et al., 2022; PETL_SPEC A.9 / B.4) on the per-frame image ViT (``clip-vit-b16``, the paper's
CLIP ViT-B/16, by default): on the patch tokens only, ``x_patch += fc2(DWConv3D_(k,1,1)(fc1(x_patch)))`` with no
activation, LN or scale; the CLS token passes unchanged.

Inserted on the residual stream before attention (``pre_attn`` hook) and/or before the MLP (``pre_mlp`` hook);
default bottleneck 384, before-MLP, every block (the ``adapter12x384`` preset). Init as the released code: fc
weights PyTorch default, fc biases 0, conv weight and bias 0, so every adapter is an exact identity at step 0.
Parameters per adapter: 2·C·Ca + (k + 2)·Ca + C (= 2·C·Ca + 5·Ca + C for k = 3; 592,512 for C = 768, Ca = 384).

The hook sees (B·T, 1 + H·W, C); ``ctx.frames``, ``ctx.grid`` and ``ctx.num_prefix_tokens`` give the reshape to
(B, Ca, T, H, W) for the temporal convolution. Video backbones already mix time in attention, so the method is
refused there.

Tensor names: ``blocks.{i}.st_adapter.{pre_attn,pre_mlp}.{fc1,conv,fc2}.{weight,bias}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from vpetl.backbones.base import Backbone
from vpetl.backbones.hooks import BlockContext
from vpetl.errors import InvalidRequest
from vpetl.petl import functional as PF
from vpetl.petl.base import Method, MethodAdapter, MethodConfig, check_int, check_subset
from vpetl.petl.registry import register_method

Tensor = torch.Tensor
POSITIONS = ("pre_attn", "pre_mlp")


@dataclass(frozen=True)
class StAdapterConfig(MethodConfig):
    """ST-Adapter hyper-parameters.

    Attributes:
        bottleneck: Ca. Default 384.
        positions: subset of pre_attn, pre_mlp. Default (pre_mlp,) (``adapter12x384``; both = ``adapter24x384``).
        kernel_size: temporal kernel k of the depthwise conv, odd. Default 3.
        num_layers: adapt only the last ``num_layers`` blocks; None (default) = every block.
    """

    method: ClassVar[str] = "st_adapter"
    size_field: ClassVar[str | None] = "bottleneck"

    bottleneck: int = 384
    positions: tuple[str, ...] = ("pre_mlp",)
    kernel_size: int = 3
    num_layers: int | None = None

    def _validate(self) -> None:
        check_int(self, "bottleneck")
        check_subset(self, "positions", POSITIONS)
        check_int(self, "kernel_size")
        if self.kernel_size % 2 == 0:
            raise InvalidRequest(f"st_adapter: option 'kernel_size' must be odd, got {self.kernel_size}")
        check_int(self, "num_layers", optional=True)


class StBranch(nn.Module):
    """fc1 (C→Ca), depthwise Conv3d (Ca, k×1×1), fc2 (Ca→C)."""

    def __init__(self, dim: int, bottleneck: int, kernel_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, bottleneck)
        self.conv = nn.Conv3d(
            bottleneck, bottleneck, (kernel_size, 1, 1), padding=(kernel_size // 2, 0, 0), groups=bottleneck
        )
        self.fc2 = nn.Linear(bottleneck, dim)
        for p in (self.fc1.bias, self.conv.weight, self.conv.bias, self.fc2.bias):
            nn.init.zeros_(p)  # zero conv: identity at step 0


class StAdapterAdapter(MethodAdapter):
    """ST-Adapters of one block, through the ``pre_attn``/``pre_mlp`` hooks."""

    component = "st_adapter"

    def __init__(self, dim: int, config: StAdapterConfig) -> None:
        super().__init__()
        self.branches = nn.ModuleDict(
            {p: StBranch(dim, config.bottleneck, config.kernel_size) for p in config.positions}
        )

    def weights(self) -> dict[str, Tensor]:
        # Stable names drop the ModuleDict's own name: "pre_mlp.fc1.weight" (a submodule cannot be called
        # "pre_mlp" because that is the hook method's name).
        return {f"{pos}.{n}": p for pos, branch in self.branches.items() for n, p in branch.named_parameters()}

    def _adapt(self, position: str, x: Tensor, ctx: BlockContext) -> Tensor:
        if position not in self.branches:
            return x
        weights = PF.sub(self.weights(), position)
        return PF.st_adapter(
            x, weights, frames=ctx.frames, grid_hw=(ctx.grid[1], ctx.grid[2]), num_prefix_tokens=ctx.num_prefix_tokens
        )

    def pre_attn(self, x: Tensor, ctx: BlockContext) -> Tensor:
        return self._adapt("pre_attn", x, ctx)

    def pre_mlp(self, x: Tensor, ctx: BlockContext) -> Tensor:
        return self._adapt("pre_mlp", x, ctx)


@register_method
class StAdapterMethod(Method):
    name = "st_adapter"
    config_cls = StAdapterConfig
    description = "ST-Adapter: depthwise temporal conv bottleneck on patch tokens (per-frame image ViT)"
    families = ("image_vit",)
    default_backbone = "clip-vit-b16"  # the paper's CLIP ViT-B/16
    unsupported_reason = "ST-Adapter adds temporal modelling to a per-frame image ViT; video backbones have it already"
    instead = "'adaptmlp', 'patt' or 'bapat' (or ST-Adapter on clip-vit-b16)"

    def build_block_adapters(self, backbone: Backbone) -> list[tuple[int, MethodAdapter]]:
        c: StAdapterConfig = self.config  # type: ignore[assignment]
        blocks = backbone.adaptable_blocks()
        layers = len(blocks) if c.num_layers is None else c.num_layers
        if layers > len(blocks):
            raise InvalidRequest(
                f"st_adapter: num_layers {layers} exceeds the {len(blocks)} blocks of {backbone.name}"
            )
        return [(i, StAdapterAdapter(b.dim, c)) for i, b in enumerate(blocks) if i >= len(blocks) - layers]
