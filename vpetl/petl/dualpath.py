"""DualPath (Park et al., CVPR 2023; PETL_SPEC A.10) on the per-frame image ViT: one frozen backbone run on two
tagged paths, each with its own adapters, and the two pooled features combined for the head.

- **Spatial path** (``tag="spatial"``): the clip's T frames, each through the backbone with *parallel* adapters:
  one beside attention (input LN1(x), added to the attention output) and one beside the MLP (input LN2(x)).
- **Temporal path** (``tag="temporal"``): T_G grid-like framesets — g² frames sampled uniformly from the clip,
  each scaled ×1/g (a g×g box filter) and tiled row-major into one frame-sized image (the paper: 16 frames at
  ×1/4 in a 4×4 grid of 224²; the tiling adapts to the backbone's frame size) — through the backbone with
  *serial* adapters after attention and after the MLP (``y + s·A(y)`` inside the branch).
- Adapters: ``s·Up(GELU(Down(x)))``, bottleneck 128, Down kaiming-normal, Up and biases zero (appendix Table A1),
  so both paths equal the frozen backbone at step 0. The appendix gives neither activation nor scale; GELU and
  s = 1 follow AIM, the adapter code DualPath builds on.
- Features: the two pooled features are **concatenated** (head input 2·C) by default; ``combine="sum"`` adds them.

Each adapter acts only when ``ctx.tag`` matches its path. The parallel attention adapter keeps LN1(x) from the
``adapt_qkv`` hook until the ``proj`` hook of the same block call. Parameters per block: 4·(2·C·d + d + C).

Tensor names: ``blocks.{i}.dualpath.{spatial_attn,spatial_mlp,temporal_attn,temporal_mlp}.{down,up}.{weight,bias}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vpetl.backbones.base import Backbone
from vpetl.backbones.hooks import BlockContext
from vpetl.errors import InvalidInput
from vpetl.petl import functional as PF
from vpetl.petl.base import Method, MethodAdapter, MethodConfig, check_choice, check_float, check_int
from vpetl.petl.registry import register_method

Tensor = torch.Tensor
ADAPTERS = ("spatial_attn", "spatial_mlp", "temporal_attn", "temporal_mlp")


@dataclass(frozen=True)
class DualPathConfig(MethodConfig):
    """DualPath hyper-parameters.

    Attributes:
        bottleneck: adapter width. Default 128.
        scale: s of every adapter. Default 1.0.
        grid: g; a frameset tiles g×g frames scaled ×1/g. Default 4 (the paper's 4×4); frame height and width
            must be multiples of g.
        num_framesets: T_G framesets per clip (T_G·g² frames sampled uniformly, repeating frames of short clips).
            Default 1.
        combine: "concat" (default; head input 2·C) or "sum" (head input C) of the two pooled features.
    """

    method: ClassVar[str] = "dualpath"
    size_field: ClassVar[str | None] = "bottleneck"

    bottleneck: int = 128
    scale: float = 1.0
    grid: int = 4
    num_framesets: int = 1
    combine: str = "concat"

    def _validate(self) -> None:
        check_int(self, "bottleneck")
        check_float(self, "scale")
        check_int(self, "grid")
        check_int(self, "num_framesets")
        check_choice(self, "combine", ("concat", "sum"))


class DualPathBottleneck(nn.Module):
    def __init__(self, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.kaiming_normal_(self.down.weight)
        for p in (self.down.bias, self.up.weight, self.up.bias):
            nn.init.zeros_(p)  # zero up: identity at step 0


class DualPathAdapter(MethodAdapter):
    """The four adapters of one block; each hook dispatches on ``ctx.tag``."""

    component = "dualpath"

    def __init__(self, dim: int, config: DualPathConfig) -> None:
        super().__init__()
        self.scale = config.scale
        self.paths = nn.ModuleDict({a: DualPathBottleneck(dim, config.bottleneck) for a in ADAPTERS})
        self._attn_input: Tensor | None = None

    def weights(self) -> dict[str, Tensor]:
        return {f"{a}.{n}": p for a, mod in self.paths.items() for n, p in mod.named_parameters()}

    def _term(self, which: str, x: Tensor) -> Tensor:
        return PF.dualpath_adapter(x, PF.sub(self.weights(), which), scale=self.scale)

    def adapt_qkv(
        self, h: Tensor, q: Tensor, k: Tensor, v: Tensor, ctx: BlockContext
    ) -> tuple[Tensor, Tensor, Tensor]:
        if ctx.tag == "spatial":
            self._attn_input = h  # LN1(x): the parallel attention adapter's input, used in the "proj" hook
        return q, k, v

    def adapt_linear(self, name: str, x: Tensor, y: Tensor, ctx: BlockContext) -> Tensor:
        if name != "proj":
            return y
        if ctx.tag == "spatial" and self._attn_input is not None:
            h, self._attn_input = self._attn_input, None
            return y + self._term("spatial_attn", h)  # parallel: beside attention
        if ctx.tag == "temporal":
            return y + self._term("temporal_attn", y)  # serial: after attention
        return y

    def adapt_mlp(self, h: Tensor, m: Tensor, ctx: BlockContext) -> Tensor:
        if ctx.tag == "spatial":
            return m + self._term("spatial_mlp", h)
        if ctx.tag == "temporal":
            return m + self._term("temporal_mlp", m)
        return m


def make_framesets(x: Tensor, grid: int, num_framesets: int) -> Tensor:
    """Grid-like framesets: (B, 3, T, H, W) -> (B, 3, T_G, H, W), each tiling g² frames scaled ×1/g row-major."""
    b, c, t, h, w = x.shape
    if h % grid or w % grid:
        raise InvalidInput(f"dualpath: frame size {h}×{w} must be a multiple of the frameset grid {grid}")
    total = num_framesets * grid * grid
    idx = torch.linspace(0, t - 1, total, device=x.device).round().long()  # (T_G·g²,) uniform over the clip
    frames = x.index_select(2, idx).permute(0, 2, 1, 3, 4).reshape(b * total, c, h, w)  # (B·T_G·g², 3, H, W)
    small = F.avg_pool2d(frames, grid)  # (B·T_G·g², 3, H/g, W/g): box filter, an exact ×1/g
    th, tw = small.shape[-2:]
    small = small.reshape(b, num_framesets, grid, grid, c, th, tw)  # (B, T_G, row, col, 3, th, tw)
    tiled = small.permute(0, 4, 1, 2, 5, 3, 6)  # (B, 3, T_G, row, th, col, tw)
    return tiled.reshape(b, c, num_framesets, grid * th, grid * tw)  # (B, 3, T_G, H, W)


@register_method
class DualPathMethod(Method):
    name = "dualpath"
    config_cls = DualPathConfig
    description = "DualPath: spatial (parallel) and temporal grid-frameset (serial) adapter paths, per-frame ViT"
    families = ("image_vit",)
    unsupported_reason = "DualPath adapts a per-frame image ViT to video; video backbones already mix time"
    instead = "'adaptmlp', 'patt' or 'bapat'"

    def build_block_adapters(self, backbone: Backbone) -> list[tuple[int, MethodAdapter]]:
        c: DualPathConfig = self.config  # type: ignore[assignment]
        return [(i, DualPathAdapter(b.dim, c)) for i, b in enumerate(backbone.adaptable_blocks())]

    def feature_dim(self, backbone: Backbone) -> int:
        c: DualPathConfig = self.config  # type: ignore[assignment]
        return backbone.num_features * (2 if c.combine == "concat" else 1)

    def features(self, backbone: Backbone, x: Tensor) -> Tensor:
        c: DualPathConfig = self.config  # type: ignore[assignment]
        backbone.check_input(x)
        spatial = backbone(x, tag="spatial")  # (B, C)
        temporal = backbone(make_framesets(x, c.grid, c.num_framesets), tag="temporal")  # (B, C)
        return torch.cat([spatial, temporal], dim=-1) if c.combine == "concat" else spatial + temporal
