"""Prefix-tuning (V-PETL Eq. 5, the "Concat" row of Table 6; PETL_SPEC A.7): n key/value tokens per block,
reparameterised by an MLP and concatenated in front of the frozen K and V along the token axis.

Per block: Embedding (n, C) → Linear C→d → tanh → Linear d→2C, split into K and V prefixes, given to the block
through the ``extra_kv`` hook. On Swin one prefix per block is shared by (broadcast to) every window. Init: PyTorch
defaults (embedding N(0, 1), Linear kaiming-uniform). Parameters per block: n·C + C·d + d + 2C·d + 2C.

Tensor names: ``blocks.{i}.prefix.embedding.weight``, ``blocks.{i}.prefix.fc1.{weight,bias}``,
``blocks.{i}.prefix.fc2.{weight,bias}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from vpetl.backbones.base import Backbone
from vpetl.backbones.hooks import BlockContext
from vpetl.petl import functional as PF
from vpetl.petl.base import Method, MethodAdapter, MethodConfig, check_int
from vpetl.petl.registry import register_method

Tensor = torch.Tensor


@dataclass(frozen=True)
class PrefixConfig(MethodConfig):
    """Prefix-tuning hyper-parameters.

    Attributes:
        num_tokens: n prefix tokens per block. Default 16.
        bottleneck: d, the reparameterisation MLP's middle width. Default 128.
    """

    method: ClassVar[str] = "prefix"
    size_field: ClassVar[str | None] = "bottleneck"

    num_tokens: int = 16
    bottleneck: int = 128

    def _validate(self) -> None:
        check_int(self, "num_tokens")
        check_int(self, "bottleneck")


class PrefixAdapter(MethodAdapter):
    """Prefix key/value tokens for one block, through the ``extra_kv`` hook."""

    component = "prefix"

    def __init__(self, dim: int, config: PrefixConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(config.num_tokens, dim)
        self.fc1 = nn.Linear(dim, config.bottleneck)
        self.fc2 = nn.Linear(config.bottleneck, 2 * dim)

    def extra_kv(self, h: Tensor, ctx: BlockContext) -> tuple[Tensor, Tensor] | None:
        k, v = PF.prefix_kv(self.weights(), h.shape[0])  # each (n, C): the block broadcasts it to every row
        return k.to(h.dtype), v.to(h.dtype)


@register_method
class PrefixMethod(Method):
    name = "prefix"
    config_cls = PrefixConfig
    description = "prefix-tuning: MLP-reparameterised key/value tokens concatenated in every attention"

    def build_block_adapters(self, backbone: Backbone) -> list[tuple[int, MethodAdapter]]:
        c: PrefixConfig = self.config  # type: ignore[assignment]
        return [(i, PrefixAdapter(block.dim, c)) for i, block in enumerate(backbone.adaptable_blocks())]
