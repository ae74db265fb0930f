"""DualPath (Park et al., CVPR 2023; PETL_SPEC A.10; appendix Table A1) on the per-frame image ViT: one frozen
backbone run on two tagged paths, each with its own adapters, and the two pooled features combined for the head.
Its backbone is CLIP ViT-B/16 (``clip-vit-b16``, the method's ``default_backbone``).

- **Frames**: the clip holds the temporal path's frames; each path samples its own from it, one frame at the start
  of each of n equal segments (``(i·T) // n``), so no frame is used twice. Table A1 (K400): the spatial path takes
  T_S = 8 frames at rate 16, the temporal path 16·T_G frames at rate 8, 4, 2 for T_G = 1, 2, 3: for T_G ≤ 2 over the
  same span, so a 16-frame clip at rate 8 gives both — the temporal path all 16, the spatial path every other one.
  A clip with fewer than max(T_S, T_G·g²) frames is refused (the backbone's input spec is checked when a model or
  an uploaded adapter is built, the clip itself in ``features``). For T_G = 3 (48 frames at rate 2) the spatial
  path's every-6th frame spans less of the video than the paper's rate 16: a deployment serves one clip per request.
- **Spatial path** (``tag="spatial"``): T_S frames, each through the backbone with *parallel* adapters:
  one beside attention (input LN1(x), added to the attention output) and one beside the MLP (input LN2(x)).
- **Temporal path** (``tag="temporal"``): T_G grid-like framesets — g² frames each, scaled ×1/g (a g×g box
  filter) and tiled row-major into one frame-sized image (16 frames at ×1/4 in a 4×4 grid of 224²) — through the
  backbone with *serial* adapters after attention and after the MLP (``y + s·A(y)`` inside the branch). With
  ``temporal_pre_attn`` (Table A1's SSv2 column, "5 (2 SP, 3 TP)": "one adapter before the multi-head attention
  layer in the temporal path") a fifth, serial adapter acts on the attention's input: ``h + s·A(h)``, h = LN1(x).
- Adapters: ``s·Up(GELU(Down(x)))``, bottleneck 128, Down kaiming-normal, Up and biases zero (appendix), so both
  paths equal the frozen backbone at step 0. The appendix gives neither activation nor scale; GELU and s = 1
  follow AIM, the adapter code DualPath builds on.
- Features: the two pooled features are **concatenated** (head input 2·C) by default; ``combine="sum"`` adds them.

Each adapter acts only when ``ctx.tag`` matches its path. The parallel attention adapter keeps LN1(x) from the
``adapt_qkv`` hook until the ``proj`` hook of the same block call. Parameters per block: A·(2·C·d + d + C), A = 4
(5 with ``temporal_pre_attn``); ``clip-vit-b16``, d = 128: 9,480,192 (11,850,240), plus the head 2·768·K + K.

Tensor names: ``blocks.{i}.dualpath.{spatial_attn,spatial_mlp,temporal_attn,temporal_mlp}.{down,up}.{weight,bias}``
and ``blocks.{i}.dualpath.temporal_pre_attn.*`` with the option.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vpetl.backbones.base import Backbone
from vpetl.backbones.hooks import BlockContext
from vpetl.errors import InvalidInput, UnsupportedMethod
from vpetl.petl import functional as PF
from vpetl.petl.base import Method, MethodAdapter, MethodConfig, check_bool, check_choice, check_float, check_int
from vpetl.petl.registry import register_method

Tensor = torch.Tensor
ADAPTERS = ("spatial_attn", "spatial_mlp", "temporal_attn", "temporal_mlp")
EXTRA = "temporal_pre_attn"


@dataclass(frozen=True)
class DualPathConfig(MethodConfig):
    """DualPath hyper-parameters (defaults: appendix Table A1, K400 column).

    Attributes:
        bottleneck: adapter width. Default 128.
        scale: s of every adapter. Default 1.0.
        grid: g; a frameset tiles g×g frames scaled ×1/g. Default 4 (16 frames in a 4×4 grid); frame height and
            width must be multiples of g.
        num_framesets: T_G framesets per clip (the temporal path samples T_G·g² frames). Default 1.
        spatial_frames: T_S frames for the spatial path. Default 8.
        temporal_pre_attn: a fifth adapter, serial, before attention in the temporal path (the SSv2 column's
            "5 (2 SP, 3 TP)"). Default off.
        combine: "concat" (default; head input 2·C) or "sum" (head input C) of the two pooled features.
    """

    method: ClassVar[str] = "dualpath"
    size_field: ClassVar[str | None] = "bottleneck"

    bottleneck: int = 128
    scale: float = 1.0
    grid: int = 4
    num_framesets: int = 1
    spatial_frames: int = 8
    temporal_pre_attn: bool = False
    combine: str = "concat"

    def _validate(self) -> None:
        check_int(self, "bottleneck")
        check_float(self, "scale")
        check_int(self, "grid")
        check_int(self, "num_framesets")
        check_int(self, "spatial_frames")
        check_bool(self, "temporal_pre_attn")
        check_choice(self, "combine", ("concat", "sum"))

    @property
    def temporal_frames(self) -> int:
        """T_G·g²: the frames the temporal path samples."""
        return self.num_framesets * self.grid * self.grid

    @property
    def clip_frames(self) -> int:
        """The fewest frames a clip must hold: max(T_S, T_G·g²)."""
        return max(self.spatial_frames, self.temporal_frames)


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
        names = ADAPTERS + ((EXTRA,) if config.temporal_pre_attn else ())
        self.paths = nn.ModuleDict({a: DualPathBottleneck(dim, config.bottleneck) for a in names})
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
        if name == "norm1" and ctx.tag == "temporal" and EXTRA in self.paths:
            return y + self._term(EXTRA, y)  # serial, on the attention's input LN1(x)
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


def segment_frames(x: Tensor, n: int, what: str) -> Tensor:
    """(B, 3, T, H, W) -> (B, 3, n, H, W): the first frame of each of n equal segments, ``(i·T) // n``; never
    repeats a frame (a clip shorter than n is refused)."""
    t = x.shape[2]
    if t < n:
        raise InvalidInput(f"dualpath: the {what} needs {n} frames, the clip has {t}")
    idx = torch.arange(n, device=x.device) * t // n  # (n,), strictly increasing for t >= n
    return x.index_select(2, idx)


def make_framesets(x: Tensor, grid: int, num_framesets: int) -> Tensor:
    """Grid-like framesets: (B, 3, T, H, W) -> (B, 3, T_G, H, W), each tiling g² frames scaled ×1/g row-major;
    the T_G·g² frames are sampled from the clip by :func:`segment_frames`."""
    b, c, t, h, w = x.shape
    if h % grid or w % grid:
        raise InvalidInput(f"dualpath: frame size {h}×{w} must be a multiple of the frameset grid {grid}")
    total = num_framesets * grid * grid
    frames = segment_frames(x, total, f"temporal path ({num_framesets} frameset(s) of {grid}×{grid})")
    frames = frames.permute(0, 2, 1, 3, 4).reshape(b * total, c, h, w)  # (B·T_G·g², 3, H, W)
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
    default_backbone = "clip-vit-b16"
    unsupported_reason = "DualPath adapts a per-frame image ViT to video; video backbones already mix time"
    instead = "'adaptmlp', 'patt' or 'bapat' (or DualPath on clip-vit-b16)"

    def check_backbone(self, backbone: Backbone) -> None:
        """Also refuse a backbone served with fewer frames per clip than the two paths sample: the server decodes
        ``input_spec.num_frames`` frames, so an adapter that needs more could never be served."""
        super().check_backbone(backbone)
        c: DualPathConfig = self.config  # type: ignore[assignment]
        have = backbone.input_spec.num_frames
        if have < c.clip_frames:
            raise UnsupportedMethod(
                f"method 'dualpath' needs clips of {c.clip_frames} frames (temporal path: {c.num_framesets} "
                f"frameset(s) of {c.grid}×{c.grid} = {c.temporal_frames} frames; spatial path: {c.spatial_frames}), "
                f"but backbone {backbone.name!r} is served with {have}-frame clips; register the backbone with "
                f"--frames {c.clip_frames} instead, or lower num_framesets, grid or spatial_frames"
            )

    def build_block_adapters(self, backbone: Backbone) -> list[tuple[int, MethodAdapter]]:
        c: DualPathConfig = self.config  # type: ignore[assignment]
        return [(i, DualPathAdapter(b.dim, c)) for i, b in enumerate(backbone.adaptable_blocks())]

    def feature_dim(self, backbone: Backbone) -> int:
        c: DualPathConfig = self.config  # type: ignore[assignment]
        return backbone.num_features * (2 if c.combine == "concat" else 1)

    def features(self, backbone: Backbone, x: Tensor) -> Tensor:
        c: DualPathConfig = self.config  # type: ignore[assignment]
        backbone.check_input(x)
        frames = segment_frames(x, c.spatial_frames, "spatial path")  # (B, 3, T_S, H, W)
        spatial = backbone(frames, tag="spatial")  # (B, C)
        temporal = backbone(make_framesets(x, c.grid, c.num_framesets), tag="temporal")  # (B, C)
        return torch.cat([spatial, temporal], dim=-1) if c.combine == "concat" else spatial + temporal
