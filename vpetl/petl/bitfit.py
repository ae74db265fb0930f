"""BitFit (PETL_SPEC A.6): every bias of the backbone is trained in place, plus the head.

"Bias" = a parameter named ``bias`` or ``*_bias``: Linear/Conv biases, LayerNorm biases, VideoMAE's ``q_bias`` and
``v_bias`` (its k has no bias, and none is added). Swin's ``relative_position_bias_table`` (the bias the position
adds to each attention score) is trained too by default (``position_tables``): that is the BitFit row of V-PETL's
Table 3, whose count is reached only with the tables — Swin-B, 174 classes: 137,216 biases + 953,160 table
entries + 178,350 head = 1,268,726 (the table prints 1.29M; 1,090,376 without the head, printed 1.11M).
``position_tables=False`` trains the biases alone (315,566 with the head). Backbones without tables ignore it.
A conv stem's inner convolutions (``vpetl-demo``) are not trained: see :data:`STEM_PREFIX`.

Tensor names: ``backbone.<parameter path>``, e.g. ``backbone.blocks.0.attn.q_bias``,
``backbone.layers.0.blocks.1.norm1.bias`` or ``backbone.layers.0.blocks.1.attn.relative_position_bias_table``. A
mixed-task engine would add ``task_bias − frozen_bias`` with ``functional.add_bias``; biases outside blocks (patch
embedding, final norm, Swin's patch-merging norm) have no hook, so mixed batches of BitFit tasks are not supported
by the hooks alone (on Swin they run as per-task sub-batches).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from vpetl.backbones.base import Backbone
from vpetl.errors import InvalidRequest, VpetlError
from vpetl.petl.base import Method, MethodConfig, check_bool
from vpetl.petl.registry import register_method

POSITION_TABLE = "relative_position_bias_table"
# the convolutions of a conv stem (``vpetl-demo``: ConvStem3D) stay frozen, as a feature extractor: their
# outputs pass a ReLU, so a bias change there is not a shift any hook could apply; the stem's last projection
# (``patch_embed.proj.bias``, the tokens' own bias) is trained as on every ViT
STEM_PREFIX = "patch_embed.stem."


def is_bias(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return leaf == "bias" or leaf.endswith("_bias")


@dataclass(frozen=True)
class BitfitConfig(MethodConfig):
    """BitFit hyper-parameters.

    Attributes:
        position_tables: also train Swin's relative-position bias tables (default, as V-PETL Table 3 counts it).
    """

    method: ClassVar[str] = "bitfit"

    position_tables: bool = True

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, error: type[VpetlError] = InvalidRequest) -> MethodConfig:
        """Strict as the base, except that an adapter file written before ``position_tables`` existed (no such
        key; it trained the biases alone) reads as ``position_tables=False``: it serves exactly as it did."""
        if isinstance(data, Mapping) and "position_tables" not in data:
            data = {**data, "position_tables": False}
        return super().from_dict(data, error=error)

    def _validate(self) -> None:
        check_bool(self, "position_tables")


@register_method
class BitfitMethod(Method):
    name = "bitfit"
    config_cls = BitfitConfig
    description = "BitFit: every bias of the backbone trained (Swin's position bias tables too), plus the head"

    def trainable_backbone_parameters(self, backbone: Backbone) -> list[str]:
        c: BitfitConfig = self.config  # type: ignore[assignment]
        return [
            n
            for n, _ in backbone.named_parameters()
            if ".adapters." not in n
            and not n.startswith(STEM_PREFIX)
            and (is_bias(n) or (c.position_tables and n.endswith(POSITION_TABLE)))
        ]
