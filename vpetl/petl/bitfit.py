"""BitFit (PETL_SPEC A.6): every bias of the backbone is trained in place, plus the head.

"Bias" = a parameter named ``bias`` or ``*_bias``: Linear/Conv biases, LayerNorm biases, VideoMAE's ``q_bias`` and
``v_bias`` (its k has no bias, and none is added). Swin's ``relative_position_bias_table`` is a position table, not
a bias, and stays frozen.

Tensor names: ``backbone.<parameter path>``, e.g. ``backbone.blocks.0.attn.q_bias`` or
``backbone.layers.0.blocks.1.norm1.bias``. A mixed-task engine would add ``task_bias − frozen_bias`` with
``functional.add_bias``; biases outside blocks (patch embedding, final norm, Swin's patch-merging norm) have no
hook, so mixed batches of BitFit tasks are not supported by the hooks alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vpetl.backbones.base import Backbone
from vpetl.petl.base import Method, MethodConfig
from vpetl.petl.registry import register_method


def is_bias(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return leaf == "bias" or leaf.endswith("_bias")


@dataclass(frozen=True)
class BitfitConfig(MethodConfig):
    """BitFit has no options beyond ``train_head``."""

    method: ClassVar[str] = "bitfit"


@register_method
class BitfitMethod(Method):
    name = "bitfit"
    config_cls = BitfitConfig
    description = "BitFit: every bias of the backbone trained, plus the head"

    def trainable_backbone_parameters(self, backbone: Backbone) -> list[str]:
        return [n for n, _ in backbone.named_parameters() if ".adapters." not in n and is_bias(n)]
