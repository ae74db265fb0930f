"""BAPAT (V-PETL's Swin-BAPAT, PETL_SPEC A.3 / B.1.4): PATT in every attention plus parallel AdaptMLP in every MLP.

``bottleneck`` is PATT's d (the paper's ``d_bottle`` knob in Table 3); AdaptMLP keeps its own width
(``mlp_bottleneck``, 64). Swin-B, d = 128, r = 64, 174 classes: 6,379,438 trainable parameters (pinned by tests).

Tensor names are PATT's and AdaptMLP's: ``blocks.{i}.patt.*`` and ``blocks.{i}.adaptmlp.*``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vpetl.backbones.base import Backbone
from vpetl.petl import functional as PF
from vpetl.petl.adaptmlp import MODES, adaptmlp_adapters
from vpetl.petl.base import (
    Method,
    MethodAdapter,
    MethodConfig,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_subset,
)
from vpetl.petl.patt import PattConfig, patt_adapters
from vpetl.petl.registry import register_method


@dataclass(frozen=True)
class BapatConfig(MethodConfig):
    """BAPAT hyper-parameters.

    Attributes:
        bottleneck: PATT's d. Default 128.
        positions: PATT slots, default (k, v).
        scale: PATT's s, default 0.8.
        learnable_scale: PATT's learnable s, off.
        mlp_bottleneck: AdaptMLP's r, default 64.
        mlp_scale: AdaptMLP's s, default 0.1.
        mlp_mode: AdaptMLP's mode, default "parallel" (V-PETL's hard-wired ``ffn_option``).
    """

    method: ClassVar[str] = "bapat"
    size_field: ClassVar[str | None] = "bottleneck"

    bottleneck: int = 128
    positions: tuple[str, ...] = ("k", "v")
    scale: float = 0.8
    learnable_scale: bool = False
    mlp_bottleneck: int = 64
    mlp_scale: float = 0.1
    mlp_mode: str = "parallel"

    def _validate(self) -> None:
        check_int(self, "bottleneck")
        check_subset(self, "positions", PF.QKV_SLOTS)
        check_float(self, "scale")
        check_bool(self, "learnable_scale")
        check_int(self, "mlp_bottleneck")
        check_float(self, "mlp_scale")
        check_choice(self, "mlp_mode", MODES)

    def patt_config(self) -> PattConfig:
        return PattConfig(
            train_head=self.train_head, bottleneck=self.bottleneck, positions=self.positions, scale=self.scale,
            learnable_scale=self.learnable_scale,
        )


@register_method
class BapatMethod(Method):
    name = "bapat"
    config_cls = BapatConfig
    description = "PATT in attention + AdaptMLP in the MLP, every block (V-PETL Swin-BAPAT)"

    def build_block_adapters(self, backbone: Backbone) -> list[tuple[int, MethodAdapter]]:
        c: BapatConfig = self.config  # type: ignore[assignment]
        return patt_adapters(backbone, c.patt_config()) + adaptmlp_adapters(
            backbone, c.mlp_bottleneck, c.mlp_scale, c.mlp_mode
        )
