"""LoRA on the attention projections (PETL_SPEC A.5 / B.5): ``y_t = W_t h + (α/r)·B_t A_t h`` for t in targets.

A (r, C) kaiming-uniform(a=√5) and B (C, r) zero, as HF PEFT, so the model is unchanged at step 0. Default r = 16,
α = r (scaling 1), targets q and v. Applied through ``adapt_qkv`` after the frozen projection (its bias included;
adding after the bias is the same sum). Parameters per block: 2·r·C per target.

Tensor names: ``blocks.{i}.lora.{t}.A`` (r, C) and ``blocks.{i}.lora.{t}.B`` (C, r), e.g. ``blocks.0.lora.q.A``.
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
from vpetl.petl.base import Method, MethodAdapter, MethodConfig, check_float, check_int, check_subset
from vpetl.petl.registry import register_method

Tensor = torch.Tensor


@dataclass(frozen=True)
class LoraConfig(MethodConfig):
    """LoRA hyper-parameters.

    Attributes:
        rank: r. Default 16.
        alpha: α; None (default) means α = r, i.e. scaling α/r = 1.
        targets: non-empty subset of q, k, v. Default (q, v).
    """

    method: ClassVar[str] = "lora"
    size_field: ClassVar[str | None] = "rank"

    rank: int = 16
    alpha: float | None = None
    targets: tuple[str, ...] = ("q", "v")

    def _validate(self) -> None:
        check_int(self, "rank")
        check_float(self, "alpha", positive=True, optional=True)
        check_subset(self, "targets", PF.QKV_SLOTS)

    @property
    def scaling(self) -> float:
        """α / r (the scale the functional form takes; a padded rank must keep its own task's scaling)."""
        return (self.alpha if self.alpha is not None else float(self.rank)) / self.rank


class LoraPair(nn.Module):
    """A and B of one target."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, dim))
        self.B = nn.Parameter(torch.zeros(dim, rank))  # zero B: no change at step 0
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))


class LoraAdapter(MethodAdapter):
    """LoRA for one block's q/k/v, through the ``adapt_qkv`` hook."""

    component = "lora"

    def __init__(self, dim: int, config: LoraConfig) -> None:
        super().__init__()
        self.targets, self.scaling = config.targets, config.scaling
        for t in config.targets:  # submodules named q/k/v, so parameter names are the stable "q.A", "v.B"
            self.add_module(t, LoraPair(dim, config.rank))

    def adapt_qkv(
        self, h: Tensor, q: Tensor, k: Tensor, v: Tensor, ctx: BlockContext
    ) -> tuple[Tensor, Tensor, Tensor]:
        return PF.lora_qkv(h, q, k, v, self.weights(), scale=self.scaling, targets=self.targets)


@register_method
class LoraMethod(Method):
    name = "lora"
    config_cls = LoraConfig
    description = "LoRA: low-rank updates B·A on the q and v projections"

    def build_block_adapters(self, backbone: Backbone) -> list[tuple[int, MethodAdapter]]:
        c: LoraConfig = self.config  # type: ignore[assignment]
        return [(i, LoraAdapter(block.dim, c)) for i, block in enumerate(backbone.adaptable_blocks())]
