"""Extension points of a transformer block: how PETL methods attach to a frozen backbone without editing it.

Every backbone block owns ``adapters: nn.ModuleDict`` (empty by default). A PETL method (``vpetl.petl``) or the
mixed-task engine adds a :class:`BlockAdapter` to it; the block calls each hook at a fixed place in its forward.
Every hook is a no-op by default, so an adapter implements only what it changes:

==================  ============================================================  =====================
hook                where                                                          used by
==================  ============================================================  =====================
``pre_block``       before the block (may add tokens)                              VPT
``post_block``      after the block (drops what ``pre_block`` added)               VPT
``pre_attn``        residual stream before LN1                                     ST-Adapter
``adapt_qkv``       after the frozen q/k/v projections, before the head split      PATT, LoRA, BitFit
``extra_kv``        extra key/value tokens concatenated along the token axis       prefix-tuning
``adapt_linear``    after a named frozen op ("norm1", "proj", "fc1", "fc2", …)     BitFit, LoRA
``pre_mlp``         residual stream before LN2                                     ST-Adapter
``adapt_mlp``       after the frozen MLP, given LN2(x) and the MLP output          AdaptMLP
==================  ============================================================  =====================

Rows and samples: attention hooks see ``R = B · rows_per_sample`` rows (windows of one Swin clip, frames of one
per-frame ViT clip); rows of one sample are contiguous, so per-sample weights expand with
``repeat_interleave(ctx.rows_per_sample)``. ``ctx`` tells every hook how its rows map to clips.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

Tensor = torch.Tensor


@dataclass(frozen=True)
class BlockContext:
    """What a hook needs to know about the tensor it is given.

    Attributes:
        batch_size: clips in the batch (B).
        rows_per_sample: leading-dim rows per clip of the tensor the hook sees (1, frames, or windows).
        grid: (T', H', W') token grid of the block's input (before windowing).
        num_prefix_tokens: tokens at the front of the token axis that are not patches (CLS).
        frames: frames per clip for per-frame image backbones (else the temporal grid size).
        tag: which forward path is running (DualPath: "spatial" / "temporal"); None otherwise.
        block_index: global index of the block.
    """

    batch_size: int
    rows_per_sample: int
    grid: tuple[int, int, int]
    num_prefix_tokens: int = 0
    frames: int = 1
    tag: str | None = None
    block_index: int = 0

    def with_rows(self, rows_per_sample: int) -> BlockContext:
        return replace(self, rows_per_sample=rows_per_sample)


class BlockAdapter(nn.Module):
    """Base class of everything that attaches to a block. Override only the hooks you need."""

    def pre_block(self, x: Tensor, ctx: BlockContext) -> Tensor:
        return x

    def post_block(self, x: Tensor, ctx: BlockContext) -> Tensor:
        return x

    def pre_attn(self, x: Tensor, ctx: BlockContext) -> Tensor:
        return x

    def adapt_qkv(
        self, h: Tensor, q: Tensor, k: Tensor, v: Tensor, ctx: BlockContext
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``h`` is exactly what the frozen projections saw (LN1 output, per window on Swin); q/k/v are (R, N, C)."""
        return q, k, v

    def extra_kv(self, h: Tensor, ctx: BlockContext) -> tuple[Tensor, Tensor] | None:
        """Extra key/value tokens, each (R, n, C) or (n, C) (broadcast over rows), or None."""
        return None

    def adapt_linear(self, name: str, x: Tensor, y: Tensor, ctx: BlockContext) -> Tensor:
        """``y = op(x)`` for the named frozen op; return the adapted output."""
        return y

    def pre_mlp(self, x: Tensor, ctx: BlockContext) -> Tensor:
        return x

    def adapt_mlp(self, h: Tensor, m: Tensor, ctx: BlockContext) -> Tensor:
        """``h`` = LN2(x), ``m`` = MLP(h); return the MLP branch output (before the residual add)."""
        return m


class AdaptableBlock(nn.Module):
    """Mixin for blocks: owns ``adapters`` and runs the hooks in insertion order."""

    adapters: nn.ModuleDict

    def _init_adapters(self) -> None:
        self.adapters = nn.ModuleDict()

    def _each(self) -> list[BlockAdapter]:
        return list(self.adapters.values())  # type: ignore[arg-type]

    def hook_x(self, hook: str, x: Tensor, ctx: BlockContext) -> Tensor:
        for adapter in self._each():
            x = getattr(adapter, hook)(x, ctx)
        return x

    def hook_linear(self, name: str, x: Tensor, y: Tensor, ctx: BlockContext) -> Tensor:
        for adapter in self._each():
            y = adapter.adapt_linear(name, x, y, ctx)
        return y

    def hook_qkv(self, h: Tensor, q: Tensor, k: Tensor, v: Tensor, ctx: BlockContext) -> tuple[Tensor, Tensor, Tensor]:
        for adapter in self._each():
            q, k, v = adapter.adapt_qkv(h, q, k, v, ctx)
        return q, k, v

    def hook_extra_kv(self, h: Tensor, ctx: BlockContext) -> tuple[Tensor, Tensor] | None:
        """Concatenate every adapter's extra K/V tokens; each result is (R, n_total, C)."""
        ks: list[Tensor] = []
        vs: list[Tensor] = []
        rows = h.shape[0]
        for adapter in self._each():
            extra = adapter.extra_kv(h, ctx)
            if extra is None:
                continue
            k, v = extra
            if k.dim() == 2:  # (n, C) shared by every row -> (R, n, C)
                k, v = k.unsqueeze(0).expand(rows, -1, -1), v.unsqueeze(0).expand(rows, -1, -1)
            ks.append(k)
            vs.append(v)
        if not ks:
            return None
        return torch.cat(ks, dim=1), torch.cat(vs, dim=1)

    def hook_mlp(self, h: Tensor, m: Tensor, ctx: BlockContext) -> Tensor:
        for adapter in self._each():
            m = adapter.adapt_mlp(h, m, ctx)
        return m
