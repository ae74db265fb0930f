"""PATT, parallel attention (V-PETL, PETL_SPEC A.1 / B.1): a tanh bottleneck on the attention input whose output
is added to the frozen q/k/v projections, ``k = k + s·P_k``, ``v = v + s·P_v`` (positions configurable).

One bottleneck over the full channel dim, shared by all heads and all selected slots: W_down C→d, W_up d→|pos|·C,
both with bias, PyTorch's default Linear init (as the released code: PATT is *not* zero at step 0). On Swin the
input is each window of LN1(x); on ViTs it is LN1(x) over all tokens (our design; the released code has no ViT
PATT). Parameters per block: (|pos|+1)·C·d + d + |pos|·C, i.e. 3Cd + d + 2C for (k, v).

Tensor names: ``blocks.{i}.patt.down.{weight,bias}``, ``blocks.{i}.patt.up.{weight,bias}`` and, with
``learnable_scale``, ``blocks.{i}.patt.scale`` (0-d).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from vpetl.backbones.base import Backbone
from vpetl.backbones.hooks import BlockContext
from vpetl.petl import functional as PF
from vpetl.petl.base import Method, MethodAdapter, MethodConfig, check_bool, check_float, check_int, check_subset
from vpetl.petl.registry import register_method

Tensor = torch.Tensor


@dataclass(frozen=True)
class PattConfig(MethodConfig):
    """PATT hyper-parameters.

    Attributes:
        bottleneck: d. Default 128, the value of V-PETL's README and Swin-BAPAT (the argparse default 64 is not
            used); the same d in every block whatever its width C.
        positions: non-empty subset of q, k, v (comma string or list), stored in q, k, v order. Default (k, v).
        scale: s, a fixed float. Default 0.8 (paper Table 5; the code's argparse 0.2 is not used).
        learnable_scale: make s a trainable 0-d parameter per block, initialised to ``scale`` (paper §3.5); off.
    """

    method: ClassVar[str] = "patt"
    size_field: ClassVar[str | None] = "bottleneck"

    bottleneck: int = 128
    positions: tuple[str, ...] = ("k", "v")
    scale: float = 0.8
    learnable_scale: bool = False

    def _validate(self) -> None:
        check_int(self, "bottleneck")
        check_subset(self, "positions", PF.QKV_SLOTS)
        check_float(self, "scale")
        check_bool(self, "learnable_scale")


class PattAdapter(MethodAdapter):
    """PATT for one block, through the ``adapt_qkv`` hook."""

    component = "patt"

    def __init__(self, dim: int, config: PattConfig) -> None:
        super().__init__()
        self.positions = config.positions
        self.down = nn.Linear(dim, config.bottleneck)  # PyTorch default init, as the released code
        self.up = nn.Linear(config.bottleneck, len(config.positions) * dim)
        self.scale: nn.Parameter | float = (
            nn.Parameter(torch.tensor(config.scale)) if config.learnable_scale else config.scale
        )

    def adapt_qkv(
        self, h: Tensor, q: Tensor, k: Tensor, v: Tensor, ctx: BlockContext
    ) -> tuple[Tensor, Tensor, Tensor]:
        return PF.patt_qkv(h, q, k, v, self.weights(), scale=self.scale, positions=self.positions)


def patt_adapters(backbone: Backbone, config: PattConfig) -> list[tuple[int, MethodAdapter]]:
    """One PATT per block (shared with BAPAT)."""
    return [(i, PattAdapter(block.dim, config)) for i, block in enumerate(backbone.adaptable_blocks())]


@register_method
class PattMethod(Method):
    name = "patt"
    config_cls = PattConfig
    description = "parallel attention: a tanh bottleneck added to q/k/v (V-PETL)"

    def build_block_adapters(self, backbone: Backbone) -> list[tuple[int, MethodAdapter]]:
        return patt_adapters(backbone, self.config)  # type: ignore[arg-type]
