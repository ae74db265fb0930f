"""VPT, visual prompt tuning (PETL_SPEC A.8 / B.2.5), on ViTs only: n learnable prompt tokens inserted before a
block and dropped after it (deep: every block has its own; shallow: block 0's prompts travel through every block
and are dropped after the last). Prompts go after the prefix tokens (after CLS on the per-frame ViT, at the front
on the video ViT), get no position embedding and never reach the pooled feature. Init: xavier-uniform computed on
a (1, n, C) tensor as AdaptFormer does (bound √(6 / (C·(n + 1)))). Parameters: depth·n·C (deep), n·C (shallow).

On Video Swin it is refused: windowed attention makes "tokens every window sees" ill-defined (AdaptFormer's note);
prefix-tuning gives every window the same extra keys/values instead.

Tensor names: ``blocks.{i}.vpt.prompts`` (n, C).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from vpetl.backbones.base import Backbone
from vpetl.backbones.hooks import BlockContext
from vpetl.petl import functional as PF
from vpetl.petl.base import Method, MethodAdapter, MethodConfig, check_bool, check_int
from vpetl.petl.registry import register_method

Tensor = torch.Tensor


@dataclass(frozen=True)
class VptConfig(MethodConfig):
    """VPT hyper-parameters.

    Attributes:
        num_tokens: n prompts (per block when deep). Default 8 (PETL_SPEC gives no default; the formula is
            12·n·768 for ViT-B deep).
        deep: a prompt set per block (default) or one set at the input (shallow).
    """

    method: ClassVar[str] = "vpt"
    size_field: ClassVar[str | None] = "num_tokens"

    num_tokens: int = 8
    deep: bool = True

    def _validate(self) -> None:
        check_int(self, "num_tokens")
        check_bool(self, "deep")


class VptAdapter(MethodAdapter):
    """Inserts its prompts in ``pre_block`` (if it has any) and drops ``num_tokens`` in ``post_block`` (if asked)."""

    component = "vpt"

    def __init__(self, dim: int, num_tokens: int, *, insert: bool, remove: bool) -> None:
        super().__init__()
        self.num_tokens, self.insert, self.remove = num_tokens, insert, remove
        if insert:
            self.prompts = nn.Parameter(torch.empty(num_tokens, dim))
            nn.init.xavier_uniform_(self.prompts.view(1, num_tokens, dim))  # AdaptFormer's (1, n, C) fan

    def pre_block(self, x: Tensor, ctx: BlockContext) -> Tensor:
        return PF.vpt_insert(x, self.prompts, ctx.num_prefix_tokens) if self.insert else x

    def post_block(self, x: Tensor, ctx: BlockContext) -> Tensor:
        return PF.vpt_remove(x, self.num_tokens, ctx.num_prefix_tokens) if self.remove else x


@register_method
class VptMethod(Method):
    name = "vpt"
    config_cls = VptConfig
    description = "visual prompt tuning (deep or shallow), ViT backbones only"
    families = ("video_vit", "image_vit")
    unsupported_reason = "prompt tokens are ill-defined under shifted-window attention"
    instead = "'prefix' (per-window key/value prefixes), 'patt' or 'bapat'"

    def build_block_adapters(self, backbone: Backbone) -> list[tuple[int, MethodAdapter]]:
        c: VptConfig = self.config  # type: ignore[assignment]
        blocks = backbone.adaptable_blocks()
        if c.deep:
            return [(i, VptAdapter(b.dim, c.num_tokens, insert=True, remove=True)) for i, b in enumerate(blocks)]
        last = len(blocks) - 1
        out: list[tuple[int, MethodAdapter]] = [
            (0, VptAdapter(blocks[0].dim, c.num_tokens, insert=True, remove=last == 0))
        ]
        if last > 0:  # a parameter-free adapter that drops the shallow prompts after the last block
            out.append((last, VptAdapter(blocks[last].dim, c.num_tokens, insert=False, remove=True)))
        return out
