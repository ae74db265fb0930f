"""The bank's block adapter: applies many tasks' adapter terms inside ONE backbone forward.

It is attached once to every block (``block.adapters["bank"]``) and, per batch, receives a plan:

- ``single``: every sample uses one task -> its 2-D weights, exactly the training path;
- ``segment``: samples sorted by task; each contiguous segment gets its task's 2-D weights (Punica's SGMV idea:
  one GEMM per segment, no weight copies, segments without a component pass through untouched);
- ``gather``: per-sample stacks ``(B, …)`` (zero-padded to the widest bottleneck) and one ``bmm`` per op.

Every term is computed by the same functions the trainable adapters call (``vpetl.petl.functional``), with scales
already folded into the weights (see ``bank_tasks``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vpetl.backbones.hooks import BlockAdapter, BlockContext
from vpetl.petl import functional as PF

Tensor = torch.Tensor
Components = dict[str, dict[str, Tensor]]


@dataclass
class Part:
    """Weights for a range of samples [start, end) (the whole batch for single/gather plans)."""

    start: int
    end: int
    comps: Components
    patt_positions: tuple[str, ...] = ()
    lora_targets: tuple[str, ...] = ()


@dataclass
class BlockPlan:
    mode: str  # "single" | "segment" | "gather"
    parts: list[Part] = field(default_factory=list)


_QKV_COMPONENTS = ("patt", "lora", "bitfit")


class BankBlockAdapter(BlockAdapter):
    """Reads ``self.plan`` (set by the AdapterBank before each forward, cleared after)."""

    def __init__(self) -> None:
        super().__init__()
        self.plan: BlockPlan | None = None

    # ------------------------------------------------------------------------------------------- helpers
    def _parts(self, needs: tuple[str, ...] | str) -> list[Part]:
        if self.plan is None:
            return []
        keys = (needs,) if isinstance(needs, str) else needs
        return [p for p in self.plan.parts if any(k in p.comps for k in keys)]

    def _whole(self) -> bool:
        return self.plan is not None and self.plan.mode != "segment"

    # -------------------------------------------------------------------------------------------- hooks
    def pre_block(self, x: Tensor, ctx: BlockContext) -> Tensor:
        parts = self._parts("bitfit")
        for part in parts:
            delta = part.comps["bitfit"].get("patch")
            if delta is None:
                continue
            a, b = self._rows(part, ctx)
            p = ctx.num_prefix_tokens
            x = x.clone() if part is parts[0] else x
            x[a:b, p:] = PF.add_bias(x[a:b, p:], delta)  # the patch-embedding bias reaches patch tokens only
        return x

    def _rows(self, part: Part, ctx: BlockContext) -> tuple[int, int]:
        if self._whole():
            return 0, ctx.batch_size * ctx.rows_per_sample
        return part.start * ctx.rows_per_sample, part.end * ctx.rows_per_sample

    def _st(self, where: str, x: Tensor, ctx: BlockContext) -> Tensor:
        comp = f"st_adapter.{where}"
        parts = self._parts(comp)
        if not parts:
            return x
        grid_hw = (ctx.grid[1], ctx.grid[2])
        if self._whole():
            return PF.st_adapter(
                x, parts[0].comps[comp], frames=ctx.frames, grid_hw=grid_hw, num_prefix_tokens=ctx.num_prefix_tokens
            )
        x = x.clone()
        for part in parts:
            a, b = self._rows(part, ctx)
            x[a:b] = PF.st_adapter(
                x[a:b], part.comps[comp], frames=ctx.frames, grid_hw=grid_hw, num_prefix_tokens=ctx.num_prefix_tokens
            )
        return x

    def pre_attn(self, x: Tensor, ctx: BlockContext) -> Tensor:
        return self._st("pre_attn", x, ctx)

    def pre_mlp(self, x: Tensor, ctx: BlockContext) -> Tensor:
        return self._st("pre_mlp", x, ctx)

    @staticmethod
    def _qkv_terms(h: Tensor, q: Tensor, k: Tensor, v: Tensor, part: Part) -> tuple[Tensor, Tensor, Tensor]:
        comps = part.comps
        if "patt" in comps:
            q, k, v = PF.patt_qkv(h, q, k, v, comps["patt"], scale=1.0, positions=part.patt_positions)
        if "lora" in comps:
            qkv = tuple(t for t in part.lora_targets if t in PF.QKV_SLOTS)  # proj/fc1/fc2 go through adapt_linear
            q, k, v = PF.lora_qkv(h, q, k, v, comps["lora"], scale=1.0, targets=qkv)
        if "bitfit" in comps:
            bias = comps["bitfit"]
            q = PF.add_bias(q, bias["q"]) if "q" in bias else q
            k = PF.add_bias(k, bias["k"]) if "k" in bias else k
            v = PF.add_bias(v, bias["v"]) if "v" in bias else v
        return q, k, v

    def adapt_qkv(
        self, h: Tensor, q: Tensor, k: Tensor, v: Tensor, ctx: BlockContext
    ) -> tuple[Tensor, Tensor, Tensor]:
        parts = self._parts(_QKV_COMPONENTS)
        if not parts:
            return q, k, v
        if self._whole():
            return self._qkv_terms(h, q, k, v, parts[0])
        rows = ctx.rows_per_sample
        for part in parts:
            a, b = part.start * rows, part.end * rows
            q2, k2, v2 = self._qkv_terms(h[a:b], q[a:b], k[a:b], v[a:b], part)
            # Write each segment's result back in place: no torch.cat copy of the whole activation.
            q[a:b], k[a:b], v[a:b] = q2, k2, v2
        return q, k, v

    def adapt_linear(self, name: str, x: Tensor, y: Tensor, ctx: BlockContext) -> Tensor:
        y = self._lora_linear(name, x, y, ctx)
        parts = [p for p in self._parts("bitfit") if name in p.comps["bitfit"]]
        if not parts:
            return y
        if self._whole():
            return PF.add_bias(y, parts[0].comps["bitfit"][name])
        rows = ctx.rows_per_sample
        for part in parts:
            a, b = part.start * rows, part.end * rows
            y[a:b] = PF.add_bias(y[a:b], part.comps["bitfit"][name])
        return y

    def _lora_linear(self, name: str, x: Tensor, y: Tensor, ctx: BlockContext) -> Tensor:
        """LoRA on proj / fc1 / fc2: ``y + B A x`` (α/r folded into B) for the samples whose task targets ``name``."""
        parts = [p for p in self._parts("lora") if f"{name}.A" in p.comps["lora"]]
        if not parts:
            return y
        if self._whole():  # a gather stack has zero A/B for the tasks that do not target this op
            return y + PF.lora_delta(x, PF.sub(parts[0].comps["lora"], name), scale=1.0)
        rows = ctx.rows_per_sample
        for part in parts:
            a, b = part.start * rows, part.end * rows
            y[a:b] = y[a:b] + PF.lora_delta(x[a:b], PF.sub(part.comps["lora"], name), scale=1.0)
        return y

    def adapt_mlp(self, h: Tensor, m: Tensor, ctx: BlockContext) -> Tensor:
        for mode in ("parallel", "sequential"):
            comp = f"adaptmlp.{mode}"
            parts = self._parts(comp)
            if not parts:
                continue
            if self._whole():
                m = PF.adaptmlp(h, m, parts[0].comps[comp], scale=1.0, mode=mode)
                continue
            rows = ctx.rows_per_sample
            for part in parts:
                a, b = part.start * rows, part.end * rows
                m[a:b] = PF.adaptmlp(h[a:b], m[a:b], part.comps[comp], scale=1.0, mode=mode)
        return m
