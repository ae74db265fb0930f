"""Video Swin Transformer (Liu et al., 2022): 3D patch embedding (2×4×4), shifted 3D windows (8×7×7, clamped to
the feature size) with the cyclic-shift attention mask and a 3D relative position bias, patch merging after stages
0–2, final LayerNorm, mean pool. Key names follow the official checkpoint (PETL_SPEC §3.2) minus ``backbone.``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vpetl.backbones.base import Backbone
from vpetl.backbones.hooks import AdaptableBlock, BlockContext
from vpetl.backbones.layers import Mlp, PatchEmbed3D, init_weights_vit, merge_heads, split_heads
from vpetl.protocol import InputSpec

Tensor = torch.Tensor
Triple = tuple[int, int, int]


@dataclass
class Swin3DConfig:
    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    patch_size: Triple = (2, 4, 4)
    window_size: Triple = (8, 7, 7)
    mlp_ratio: float = 4.0
    in_chans: int = 3
    norm_eps: float = 1e-5
    extra: dict[str, Any] = field(default_factory=dict)


def effective_window(grid: Triple, window: Triple, shift: Triple) -> tuple[Triple, Triple]:
    """Clamp the window to the feature size; a clamped dimension gets no shift (as the official code does)."""
    use_w, use_s = list(window), list(shift)
    for i in range(3):
        if grid[i] <= window[i]:
            use_w[i], use_s[i] = grid[i], 0
    return tuple(use_w), tuple(use_s)  # type: ignore[return-value]


def window_partition(x: Tensor, ws: Triple) -> Tensor:
    """(B, D, H, W, C) -> (B·nW, N, C) with N = ws0·ws1·ws2; windows of one sample are contiguous."""
    b, d, h, w, c = x.shape
    x = x.view(b, d // ws[0], ws[0], h // ws[1], ws[1], w // ws[2], ws[2], c)  # (B, nD, wd, nH, wh, nW, ww, C)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, ws[0] * ws[1] * ws[2], c)  # (B·nW, N, C)


def window_reverse(windows: Tensor, ws: Triple, b: int, d: int, h: int, w: int) -> Tensor:
    """(B·nW, N, C) -> (B, D, H, W, C)."""
    x = windows.view(b, d // ws[0], h // ws[1], w // ws[2], ws[0], ws[1], ws[2], -1)  # (B, nD, nH, nW, wd, wh, ww, C)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, -1)  # (B, D, H, W, C)


def shift_attention_mask(padded: Triple, ws: Triple, shift: Triple, device: torch.device) -> Tensor:
    """(nW, N, N) additive mask: −100 between tokens that came from different regions after the cyclic shift."""
    img = torch.zeros((1, *padded, 1), device=device)
    region = 0
    for ds in (slice(-ws[0]), slice(-ws[0], -shift[0]), slice(-shift[0], None)):
        for hs in (slice(-ws[1]), slice(-ws[1], -shift[1]), slice(-shift[1], None)):
            for wsl in (slice(-ws[2]), slice(-ws[2], -shift[2]), slice(-shift[2], None)):
                img[:, ds, hs, wsl, :] = region
                region += 1
    ids = window_partition(img, ws).squeeze(-1)  # (nW, N)
    diff = ids.unsqueeze(1) - ids.unsqueeze(2)  # (nW, N, N)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


def full_relative_position_index(window: Triple) -> Tensor:
    """(N, N) rows into the (2·Wd−1)(2·Wh−1)(2·Ww−1) bias table for the tokens of a full ``window`` (d-major)."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(s) for s in window], indexing="ij")).flatten(1)  # (3, N)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (N, N, 3)
    rel = rel + torch.tensor([m - 1 for m in window])
    stride_d = (2 * window[1] - 1) * (2 * window[2] - 1)
    return rel[..., 0] * stride_d + rel[..., 1] * (2 * window[2] - 1) + rel[..., 2]


def relative_position_index(ws: Triple, max_ws: Triple) -> Tensor:
    """(N, N) table rows for an effective window ``ws`` (N = ws0·ws1·ws2) of a block built for ``max_ws``.

    As the official Video Swin code: the index of the full ``max_ws`` window sliced ``[:N, :N]``. Tokens are
    d-major, so where only the depth is clamped (8 frames, 224²: (4, 7, 7)) the slice is the geometric offset
    index; where H or W are clamped too (96–160² inputs) it pairs tokens with the offsets of the first N tokens
    of the full window. Official checkpoints were trained and are evaluated that way, so vpetl does the same.
    """
    n = ws[0] * ws[1] * ws[2]
    return full_relative_position_index(max_ws)[:n, :n]


class WindowAttention3D(nn.Module):
    def __init__(self, dim: int, num_heads: int, window_size: Triple) -> None:
        super().__init__()
        self.dim, self.num_heads, self.window_size = dim, num_heads, window_size
        table_rows = (2 * window_size[0] - 1) * (2 * window_size[1] - 1) * (2 * window_size[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table_rows, num_heads))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self._index_cache: dict[tuple[Triple, torch.device], Tensor] = {}

    def position_bias(self, ws: Triple) -> Tensor:
        """(nH, N, N) relative position bias for the effective window."""
        key = (ws, self.relative_position_bias_table.device)
        if key not in self._index_cache:
            self._index_cache[key] = relative_position_index(ws, self.window_size).to(key[1])
        idx = self._index_cache[key]
        n = idx.shape[0]
        bias = self.relative_position_bias_table[idx.reshape(-1)].reshape(n, n, -1)  # (N, N, nH)
        return bias.permute(2, 0, 1)  # (nH, N, N)

    def forward(
        self, h: Tensor, ws: Triple, mask: Tensor | None, num_windows: int, block: AdaptableBlock, ctx: BlockContext
    ) -> Tensor:
        """h: (B·nW, N, C) windows of LN1(x); mask: (nW, N, N) or None."""
        rows, n, c = h.shape
        q, k, v = self.qkv(h).chunk(3, dim=-1)  # each (B·nW, N, C)
        extra_tokens = 0
        if block.adapters:
            q, k, v = block.hook_qkv(h, q, k, v, ctx)
            extra = block.hook_extra_kv(h, ctx)
            if extra is not None:
                extra_tokens = extra[0].shape[1]
                k = torch.cat([extra[0], k], dim=1)  # (B·nW, n + N, C)
                v = torch.cat([extra[1], v], dim=1)
        bsz = rows // num_windows
        # Group windows per sample so the (nW, …) mask broadcasts: (B, nW, nH, N, hd).
        q = split_heads(q.reshape(bsz, num_windows, n, c), self.num_heads)
        k = split_heads(k.reshape(bsz, num_windows, n + extra_tokens, c), self.num_heads)
        v = split_heads(v.reshape(bsz, num_windows, n + extra_tokens, c), self.num_heads)
        bias = self.position_bias(ws).unsqueeze(0)  # (1, nH, N, N)
        if mask is not None:
            bias = bias + mask.unsqueeze(1)  # (nW, nH, N, N)
        if extra_tokens:
            bias = F.pad(bias, (extra_tokens, 0))  # prefix columns: no position bias, never masked
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))  # (B, nW, nH, N, hd)
        out = merge_heads(out).reshape(rows, n, c)  # (B·nW, N, C)
        y = self.proj(out)
        return block.hook_linear("proj", out, y, ctx) if block.adapters else y


class SwinBlock3D(AdaptableBlock):
    def __init__(self, dim: int, num_heads: int, window_size: Triple, shift: Triple, mlp_ratio: float, eps: float):
        super().__init__()
        self.dim, self.num_heads, self.window_size, self.shift_size = dim, num_heads, window_size, shift
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = WindowAttention3D(dim, num_heads, window_size)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self._init_adapters()

    def forward(self, x: Tensor, mask: Tensor | None, ctx: BlockContext) -> Tensor:
        """x: (B, D, H, W, C); ``mask`` is the stage's shift mask (used only when this block shifts)."""
        b, d, h, w, c = x.shape
        ws, shift = effective_window((d, h, w), self.window_size, self.shift_size)
        has = bool(self.adapters)
        flat = x.reshape(b, d * h * w, c)  # (B, L, C)
        if has:
            flat = self.hook_x("pre_attn", flat, ctx)
        hn = self.norm1(flat)
        if has:
            hn = self.hook_linear("norm1", flat, hn, ctx)
        hn = hn.reshape(b, d, h, w, c)  # (B, D, H, W, C)
        pads = [(ws[i] - s % ws[i]) % ws[i] for i, s in enumerate((d, h, w))]
        hn = F.pad(hn, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))  # zero-pad after LN, as the official code
        dp, hp, wp = d + pads[0], h + pads[1], w + pads[2]
        shifted = any(s > 0 for s in shift)
        if shifted:
            hn = torch.roll(hn, shifts=(-shift[0], -shift[1], -shift[2]), dims=(1, 2, 3))
        windows = window_partition(hn, ws)  # (B·nW, N, C)
        num_windows = windows.shape[0] // b
        attn = self.attn(windows, ws, mask if shifted else None, num_windows, self, ctx.with_rows(num_windows))
        out = window_reverse(attn, ws, b, dp, hp, wp)  # (B, Dp, Hp, Wp, C)
        if shifted:
            out = torch.roll(out, shifts=shift, dims=(1, 2, 3))
        out = out[:, :d, :h, :w, :].reshape(b, d * h * w, c)  # (B, L, C)
        flat = flat + out
        if has:
            flat = self.hook_x("pre_mlp", flat, ctx)
            hn = self.hook_linear("norm2", flat, self.norm2(flat), ctx)
            flat = flat + self.hook_mlp(hn, self.mlp(hn, self, ctx), ctx)
        else:
            flat = flat + self.mlp(self.norm2(flat))
        return flat.reshape(b, d, h, w, c)  # (B, D, H, W, C)


class PatchMerging(nn.Module):
    """Concatenate each 2×2 spatial neighbourhood (order (0,0), (1,0), (0,1), (1,1)), LN(4C), Linear(4C → 2C)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        _, _, h, w, _ = x.shape
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))  # (B, D, H/2, W/2, 2C)


class SwinStage(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, cfg: Swin3DConfig, downsample: bool) -> None:
        super().__init__()
        ws = cfg.window_size
        half = (ws[0] // 2, ws[1] // 2, ws[2] // 2)
        self.window_size, self.shift_size = ws, half
        self.blocks = nn.ModuleList(
            [
                SwinBlock3D(dim, num_heads, ws, (0, 0, 0) if j % 2 == 0 else half, cfg.mlp_ratio, cfg.norm_eps)
                for j in range(depth)
            ]
        )
        self.downsample = PatchMerging(dim, cfg.norm_eps) if downsample else None


class SwinTransformer3D(Backbone):
    family = "swin3d"

    def __init__(self, config: Swin3DConfig, input_spec: InputSpec, name: str = "swin3d") -> None:
        super().__init__()
        self.config, self.input_spec, self.name = config, input_spec, name
        c = config
        self.patch_embed = PatchEmbed3D(c.patch_size, c.in_chans, c.embed_dim, norm=True)
        self.layers = nn.ModuleList(
            [
                SwinStage(c.embed_dim * 2**s, depth, c.num_heads[s], c, downsample=s < len(c.depths) - 1)
                for s, depth in enumerate(c.depths)
            ]
        )
        self.num_features = c.embed_dim * 2 ** (len(c.depths) - 1)
        self.norm = nn.LayerNorm(self.num_features, eps=c.norm_eps)
        self._mask_cache: dict[tuple[Triple, Triple, Triple, torch.device], Tensor] = {}
        self.apply(init_weights_vit)
        for stage in self.layers:
            for block in stage.blocks:
                nn.init.trunc_normal_(block.attn.relative_position_bias_table, std=0.02)

    def adaptable_blocks(self) -> list[AdaptableBlock]:
        return [block for stage in self.layers for block in stage.blocks]

    def stage_grids(self, frames: int, height: int, width: int) -> list[Triple]:
        p = self.config.patch_size
        d, h, w = -(-frames // p[0]), -(-height // p[1]), -(-width // p[2])
        grids = []
        for _ in self.layers:
            grids.append((d, h, w))
            h, w = -(-h // 2), -(-w // 2)
        return grids

    def _mask(self, grid: Triple, ws: Triple, shift: Triple, device: torch.device) -> Tensor | None:
        if not any(s > 0 for s in shift):
            return None
        padded = tuple(-(-g // w) * w for g, w in zip(grid, ws, strict=True))
        key = (padded, ws, shift, device)
        if key not in self._mask_cache:
            self._mask_cache[key] = shift_attention_mask(padded, ws, shift, device)  # type: ignore[arg-type]
        return self._mask_cache[key]

    def forward_tokens(self, x: Tensor, tag: str | None = None) -> Tensor:
        """(B, 3, T, H, W) -> final-normed tokens (B, D', H', W', C_last)."""
        self.check_input(x)
        p = self.config.patch_size
        t, h, w = x.shape[2:]
        x = F.pad(x, (0, (p[2] - w % p[2]) % p[2], 0, (p[1] - h % p[1]) % p[1], 0, (p[0] - t % p[0]) % p[0]))
        x = self.patch_embed(x).permute(0, 2, 3, 4, 1)  # (B, D', H', W', C)
        b = x.shape[0]
        index = 0
        for stage in self.layers:
            grid = tuple(x.shape[1:4])
            ws, shift = effective_window(grid, stage.window_size, stage.shift_size)  # type: ignore[arg-type]
            mask = self._mask(grid, ws, shift, x.device)  # type: ignore[arg-type]
            for block in stage.blocks:
                ctx = BlockContext(
                    batch_size=b, rows_per_sample=1, grid=grid, frames=grid[0], tag=tag, block_index=index
                )
                x = block(x, mask, ctx)
                index += 1
            if stage.downsample is not None:
                x = stage.downsample(x)
        return self.norm(x)

    def forward(self, x: Tensor, tag: str | None = None) -> Tensor:
        """(B, 3, T, H, W) -> (B, C_last): final LN, then mean over T'·H'·W'."""
        return self.forward_tokens(x, tag).mean(dim=(1, 2, 3))

    def token_info(self, frames: int, size: int) -> dict[str, Any]:
        stages = []
        for s, grid in enumerate(self.stage_grids(frames, size, size)):
            ws, shift = effective_window(grid, self.config.window_size, tuple(w // 2 for w in self.config.window_size))
            windows = 1
            for g, wd in zip(grid, ws, strict=True):
                windows *= -(-g // wd)
            stages.append(
                {
                    "stage": s,
                    "grid": list(grid),
                    "tokens": grid[0] * grid[1] * grid[2],
                    "window": list(ws),
                    "shift": list(shift),
                    "windows_per_clip": windows,
                }
            )
        return {"grid": stages[0]["grid"], "tokens": stages[0]["tokens"], "stages": stages}

    def param_breakdown(self) -> dict[str, int]:
        out = {"patch_embed": sum(p.numel() for p in self.patch_embed.parameters())}
        for s, stage in enumerate(self.layers):
            out[f"layers.{s}"] = sum(p.numel() for k, p in stage.named_parameters() if ".adapters." not in k)
        out["norm"] = sum(p.numel() for p in self.norm.parameters())
        return out
