"""Full fine-tuning (PETL_SPEC A.11): every backbone parameter trainable, plus the head.

Its result is a whole model, not an adapter: it can be saved and evaluated but is never served from the adapter
store (``servable = False``). Tensor names: ``backbone.<parameter path>`` for every backbone parameter, ``head.*``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vpetl.backbones.base import Backbone
from vpetl.petl.base import Method, MethodConfig
from vpetl.petl.registry import register_method


@dataclass(frozen=True)
class FullConfig(MethodConfig):
    """Full fine-tuning has no options beyond ``train_head``."""

    method: ClassVar[str] = "full"


@register_method
class FullMethod(Method):
    name = "full"
    config_cls = FullConfig
    description = "full fine-tuning (a whole model; not servable from the adapter store)"
    servable = False

    def trainable_backbone_parameters(self, backbone: Backbone) -> list[str]:
        return [n for n, _ in backbone.named_parameters() if ".adapters." not in n]
