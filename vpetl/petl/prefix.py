"""Prefix-tuning (V-PETL Eq. 5, the "Concat" row of Table 6; PETL_SPEC A.7): n key/value tokens per block,
reparameterised by an MLP and concatenated in front of the frozen K and V along the token axis.

Per block: Embedding (n, C) → Linear C→d → tanh → Linear d→2C, split into K and V prefixes, given to the block
through the ``extra_kv`` hook. On Swin one prefix per block is shared by (broadcast to) every window. Init: PyTorch
defaults (embedding N(0, 1), Linear kaiming-uniform). Parameters per block: n·C + C·d + d + 2C·d + 2C.

Two methods:

- ``prefix``: V-PETL Table 3's "Prefix-tuning" row, which ran inside the Swin-BAPAT scaffold: the prefix in every
  attention (in PATT's place) plus BAPAT's parallel AdaptMLP (r = 64, s = 0.1) in every MLP. Swin-B, n = 16,
  d = 128: 4,839,936 prefix + 1,553,664 AdaptMLP + a 174-class head 178,350 = 6,571,950 (the table: 6.57M).
- ``prefix_plain``: the prefix alone (plus the head), as Eq. 5 defines it.

Tensor names: ``blocks.{i}.prefix.embedding.weight``, ``blocks.{i}.prefix.fc1.{weight,bias}``,
``blocks.{i}.prefix.fc2.{weight,bias}``; ``prefix`` adds AdaptMLP's ``blocks.{i}.adaptmlp.*``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from vpetl.backbones.base import Backbone
from vpetl.backbones.hooks import BlockContext
from vpetl.errors import InvalidRequest, VpetlError
from vpetl.petl import functional as PF
from vpetl.petl.adaptmlp import MODES, adaptmlp_adapters
from vpetl.petl.base import Method, MethodAdapter, MethodConfig, check_choice, check_float, check_int
from vpetl.petl.registry import register_method

Tensor = torch.Tensor


@dataclass(frozen=True)
class PrefixPlainConfig(MethodConfig):
    """Plain prefix-tuning hyper-parameters.

    Attributes:
        num_tokens: n prefix tokens per block. Default 16.
        bottleneck: d, the reparameterisation MLP's middle width. Default 128.
    """

    method: ClassVar[str] = "prefix_plain"
    size_field: ClassVar[str | None] = "bottleneck"

    num_tokens: int = 16
    bottleneck: int = 128

    def _validate(self) -> None:
        check_int(self, "num_tokens")
        check_int(self, "bottleneck")


@dataclass(frozen=True)
class PrefixConfig(MethodConfig):
    """Prefix-tuning in the BAPAT scaffold (V-PETL Table 3's row).

    Attributes:
        num_tokens: n prefix tokens per block. Default 16.
        bottleneck: d, the reparameterisation MLP's middle width. Default 128 (the table's d_bottle).
        mlp_bottleneck: AdaptMLP's r, default 64 (BAPAT's).
        mlp_scale: AdaptMLP's s, default 0.1.
        mlp_mode: AdaptMLP's mode, default "parallel" (V-PETL's hard-wired ``ffn_option``).
    """

    method: ClassVar[str] = "prefix"
    size_field: ClassVar[str | None] = "bottleneck"

    num_tokens: int = 16
    bottleneck: int = 128
    mlp_bottleneck: int = 64
    mlp_scale: float = 0.1
    mlp_mode: str = "parallel"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, error: type[VpetlError] = InvalidRequest) -> MethodConfig:
        """Strict as the base, except that an adapter file written when ``prefix`` was the plain prefix (its
        config has no ``mlp_*`` key, and its tensors no AdaptMLP) reads as ``prefix_plain``: it serves exactly as
        it did."""
        mlp_keys = ("mlp_bottleneck", "mlp_scale", "mlp_mode")
        if isinstance(data, Mapping) and data.get("method", cls.method) == cls.method and not any(
            k in data for k in mlp_keys
        ):
            return PrefixPlainConfig.from_dict({**data, "method": PrefixPlainConfig.method}, error=error)
        return super().from_dict(data, error=error)

    def _validate(self) -> None:
        check_int(self, "num_tokens")
        check_int(self, "bottleneck")
        check_int(self, "mlp_bottleneck")
        check_float(self, "mlp_scale")
        check_choice(self, "mlp_mode", MODES)


class PrefixAdapter(MethodAdapter):
    """Prefix key/value tokens for one block, through the ``extra_kv`` hook."""

    component = "prefix"

    def __init__(self, dim: int, num_tokens: int, bottleneck: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_tokens, dim)
        self.fc1 = nn.Linear(dim, bottleneck)
        self.fc2 = nn.Linear(bottleneck, 2 * dim)

    def extra_kv(self, h: Tensor, ctx: BlockContext) -> tuple[Tensor, Tensor] | None:
        k, v = PF.prefix_kv(self.weights(), h.shape[0])  # each (n, C): the block broadcasts it to every row
        return k.to(h.dtype), v.to(h.dtype)


def prefix_adapters(backbone: Backbone, num_tokens: int, bottleneck: int) -> list[tuple[int, MethodAdapter]]:
    return [(i, PrefixAdapter(b.dim, num_tokens, bottleneck)) for i, b in enumerate(backbone.adaptable_blocks())]


@register_method
class PrefixPlainMethod(Method):
    name = "prefix_plain"
    config_cls = PrefixPlainConfig
    description = "prefix-tuning alone: MLP-reparameterised key/value tokens concatenated in every attention"

    def build_block_adapters(self, backbone: Backbone) -> list[tuple[int, MethodAdapter]]:
        c: PrefixPlainConfig = self.config  # type: ignore[assignment]
        return prefix_adapters(backbone, c.num_tokens, c.bottleneck)


@register_method
class PrefixMethod(Method):
    name = "prefix"
    config_cls = PrefixConfig
    description = "prefix-tuning as V-PETL Table 3 ran it: key/value prefixes + parallel AdaptMLP (BAPAT scaffold)"

    def build_block_adapters(self, backbone: Backbone) -> list[tuple[int, MethodAdapter]]:
        c: PrefixConfig = self.config  # type: ignore[assignment]
        # Prefixes first, then AdaptMLPs: the same init order as BAPAT (PATT, then AdaptMLP) under one seed.
        return prefix_adapters(backbone, c.num_tokens, c.bottleneck) + adaptmlp_adapters(
            backbone, c.mlp_bottleneck, c.mlp_scale, c.mlp_mode
        )
