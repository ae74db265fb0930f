"""LoRA (PETL_SPEC A.5 / B.5): ``y_t = W_t x_t + (α/r)·B_t A_t dropout(x_t)`` for each target op t.

Targets: any non-empty subset of the attention projections ``q``, ``k``, ``v`` (through ``adapt_qkv``, after the
frozen projection and its bias: adding after the bias is the same sum), the attention output ``proj`` and the MLP
``fc1`` / ``fc2`` (through ``adapt_linear``, which sees the op's input and output). Default (q, v), the paper
baseline. A (r, in) kaiming-uniform(a=√5) and B (out, r) zero, as HF PEFT, so the model is unchanged at step 0.
Default r = 16, α = r (scaling 1).

``dropout`` is PEFT's ``lora_dropout``: applied to the LoRA branch's input in training mode only (the frozen path
never sees it), so serving and evaluation are unaffected and the mixed-task engine needs no dropout at all.

Parameters per block: r·(in_t + out_t) summed over targets: 2rC for q, k, v, proj; r(C + H) for fc1 and fc2
(H = the MLP hidden width, 4C on every built-in backbone).

Tensor names: ``blocks.{i}.lora.{t}.A`` (r, in_t) and ``blocks.{i}.lora.{t}.B`` (out_t, r), e.g.
``blocks.0.lora.q.A`` or ``blocks.3.lora.fc1.B``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vpetl.backbones.base import Backbone
from vpetl.backbones.hooks import BlockContext
from vpetl.errors import InvalidRequest, VpetlError
from vpetl.petl import functional as PF
from vpetl.petl.base import Method, MethodAdapter, MethodConfig, check_float, check_int, check_subset
from vpetl.petl.registry import register_method

Tensor = torch.Tensor

#: every op LoRA can target, in the canonical order that fixes the tensor layout (q, k, v first, as before).
LORA_TARGETS = ("q", "k", "v", "proj", "fc1", "fc2")
LINEAR_TARGETS = ("proj", "fc1", "fc2")


@dataclass(frozen=True)
class LoraConfig(MethodConfig):
    """LoRA hyper-parameters.

    Attributes:
        rank: r. Default 16.
        alpha: α; None (default) means α = r, i.e. scaling α/r = 1.
        targets: non-empty subset of q, k, v, proj, fc1, fc2 (PEFT's ``target_modules``). Default (q, v).
        dropout: probability of dropping an element of the LoRA branch's input in training (PEFT's
            ``lora_dropout``); 0 (default) is no dropout. Never applied at inference.
    """

    method: ClassVar[str] = "lora"
    size_field: ClassVar[str | None] = "rank"

    rank: int = 16
    alpha: float | None = None
    targets: tuple[str, ...] = ("q", "v")
    dropout: float = 0.0

    def _validate(self) -> None:
        check_int(self, "rank")
        check_float(self, "alpha", positive=True, optional=True)
        check_subset(self, "targets", LORA_TARGETS)
        check_float(self, "dropout")
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidRequest(f"lora: option 'dropout' must be in [0, 1), got {self.dropout!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, error: type[VpetlError] = InvalidRequest) -> MethodConfig:
        """Strict as the base, except that a file written before ``dropout`` existed (no such key) reads as 0:
        dropout is train-time only, so such an adapter serves exactly as it did."""
        if isinstance(data, Mapping) and "dropout" not in data:
            data = {**data, "dropout": 0.0}
        return super().from_dict(data, error=error)

    @property
    def scaling(self) -> float:
        """α / r (the scale the functional form takes; a padded rank must keep its own task's scaling)."""
        return (self.alpha if self.alpha is not None else float(self.rank)) / self.rank


class LoraPair(nn.Module):
    """A and B of one target op: A (r, in), B (out, r)."""

    def __init__(self, dim_in: int, dim_out: int, rank: int) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, dim_in))
        self.B = nn.Parameter(torch.zeros(dim_out, rank))  # zero B: no change at step 0
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))


def target_dims(dim: int, hidden: int) -> dict[str, tuple[int, int]]:
    """(in, out) of every LoRA target op of a block with width ``dim`` and MLP hidden width ``hidden``."""
    return {
        "q": (dim, dim),
        "k": (dim, dim),
        "v": (dim, dim),
        "proj": (dim, dim),
        "fc1": (dim, hidden),
        "fc2": (hidden, dim),
    }


class LoraAdapter(MethodAdapter):
    """LoRA for one block: q/k/v through ``adapt_qkv``, proj/fc1/fc2 through ``adapt_linear``."""

    component = "lora"

    def __init__(self, dim: int, config: LoraConfig, hidden: int | None = None) -> None:
        super().__init__()
        self.targets, self.scaling, self.dropout = config.targets, config.scaling, config.dropout
        self.qkv_targets = tuple(t for t in config.targets if t in PF.QKV_SLOTS)
        dims = target_dims(dim, hidden if hidden is not None else 4 * dim)
        for t in config.targets:  # submodules named after the op, so parameter names are the stable "q.A", "fc1.B"
            self.add_module(t, LoraPair(*dims[t], config.rank))

    def _drop(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.dropout, training=True) if self.training and self.dropout > 0 else x

    def adapt_qkv(
        self, h: Tensor, q: Tensor, k: Tensor, v: Tensor, ctx: BlockContext
    ) -> tuple[Tensor, Tensor, Tensor]:
        if not self.qkv_targets:
            return q, k, v
        if not (self.training and self.dropout > 0):
            return PF.lora_qkv(h, q, k, v, self.weights(), scale=self.scaling, targets=self.qkv_targets)
        out = {"q": q, "k": k, "v": v}
        w = self.weights()
        for t in self.qkv_targets:  # an independent dropout mask per target, as PEFT (one Dropout per module)
            out[t] = out[t] + PF.lora_delta(self._drop(h), PF.sub(w, t), scale=self.scaling)
        return out["q"], out["k"], out["v"]

    def adapt_linear(self, name: str, x: Tensor, y: Tensor, ctx: BlockContext) -> Tensor:
        if name not in self.targets or name not in LINEAR_TARGETS:
            return y
        return y + PF.lora_delta(self._drop(x), PF.sub(self.weights(), name), scale=self.scaling)


def mlp_hidden(block: nn.Module) -> int:
    """The MLP hidden width of a block (``mlp.fc1`` out features; every built-in block has one)."""
    return int(block.mlp.fc1.out_features)  # type: ignore[union-attr]


@register_method
class LoraMethod(Method):
    name = "lora"
    config_cls = LoraConfig
    description = "LoRA: low-rank updates B·A on q/v (default) or any of q, k, v, proj, fc1, fc2"

    def build_block_adapters(self, backbone: Backbone) -> list[tuple[int, MethodAdapter]]:
        c: LoraConfig = self.config  # type: ignore[assignment]
        return [
            (i, LoraAdapter(block.dim, c, mlp_hidden(block)))  # type: ignore[attr-defined]
            for i, block in enumerate(backbone.adaptable_blocks())
        ]
