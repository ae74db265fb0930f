"""AdaptMLP (AdaptFormer, PETL_SPEC A.2 / B.2): a ReLU bottleneck beside the frozen MLP,
``MLP(LN2(x)) + s·Up(ReLU(Down(LN2(x))))`` (parallel, default) or after it (``mode="sequential"``).

Init as AdaptFormer's "lora" option: down weight kaiming-uniform(a=√5), down bias 0, up weight and bias 0, so the
adapter is an exact no-op at step 0. The adapter input is LN2(x) on every backbone (the paper's Eq. 6; the video
code's pre-LN input is not copied). Parameters per block: 2·C·r + r + C.

Tensor names: ``blocks.{i}.adaptmlp.down.{weight,bias}``, ``blocks.{i}.adaptmlp.up.{weight,bias}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from vpetl.backbones.base import Backbone
from vpetl.backbones.hooks import BlockContext
from vpetl.petl import functional as PF
from vpetl.petl.base import Method, MethodAdapter, MethodConfig, check_choice, check_float, check_int
from vpetl.petl.registry import register_method

Tensor = torch.Tensor
MODES = ("parallel", "sequential")


@dataclass(frozen=True)
class AdaptMlpConfig(MethodConfig):
    """AdaptMLP hyper-parameters.

    Attributes:
        bottleneck: r, the middle dimension. Default 64 (``--ffn_num``).
        scale: s, fixed. Default 0.1.
        mode: "parallel" (default) or "sequential".
    """

    method: ClassVar[str] = "adaptmlp"
    size_field: ClassVar[str | None] = "bottleneck"

    bottleneck: int = 64
    scale: float = 0.1
    mode: str = "parallel"

    def _validate(self) -> None:
        check_int(self, "bottleneck")
        check_float(self, "scale")
        check_choice(self, "mode", MODES)


class AdaptMlpAdapter(MethodAdapter):
    """AdaptMLP for one block, through the ``adapt_mlp`` hook."""

    component = "adaptmlp"

    def __init__(self, dim: int, bottleneck: int, scale: float, mode: str) -> None:
        super().__init__()
        self.scale, self.mode = scale, mode
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)  # zero up projection: the block is unchanged at step 0
        nn.init.zeros_(self.up.bias)

    def adapt_mlp(self, h: Tensor, m: Tensor, ctx: BlockContext) -> Tensor:
        return PF.adaptmlp(h, m, self.weights(), scale=self.scale, mode=self.mode)


def adaptmlp_adapters(backbone: Backbone, bottleneck: int, scale: float, mode: str) -> list[tuple[int, MethodAdapter]]:
    """One AdaptMLP per block (shared with BAPAT)."""
    return [
        (i, AdaptMlpAdapter(block.dim, bottleneck, scale, mode)) for i, block in enumerate(backbone.adaptable_blocks())
    ]


@register_method
class AdaptMlpMethod(Method):
    name = "adaptmlp"
    config_cls = AdaptMlpConfig
    description = "AdaptFormer: a ReLU bottleneck beside the frozen MLP, zero-initialised"

    def build_block_adapters(self, backbone: Backbone) -> list[tuple[int, MethodAdapter]]:
        c: AdaptMlpConfig = self.config  # type: ignore[assignment]
        return adaptmlp_adapters(backbone, c.bottleneck, c.scale, c.mode)
