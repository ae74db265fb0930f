"""Video Swin: vpetl's forward against a reference written in this file from the official algorithm
(SwinTransformer/Video-Swin-Transformer ``swin_transformer.py``): 3D patch embedding + LN, per stage the
window size clamped to the feature size (a clamped dim gets no shift), LN1 then zero padding to whole windows,
cyclic shift by half a window on odd blocks with the region mask (−100 across regions), window attention with the
3D relative position bias, reverse shift, un-pad, residual, MLP, patch merging (x0, x1, x2, x3 order, LN, linear),
final LN. Nothing from ``vpetl.backbones.swin3d`` or ``layers`` is called.

The relative position bias: the official code builds the index for the full (8,7,7) window and slices
``index[:N, :N]`` for a clamped window; the reference does exactly that. Where only the depth is clamped (tokens are
d-major: the (4,7,7) window of 8 frames at 224², PETL_SPEC §1.2) the slice is the geometric offset index; where H/W
are clamped too (96–160² inputs, the tiny config's 4×4 and 2×2 stages) it is not, and official checkpoints are
evaluated with the slice. ``test_official_slice_*`` pin both facts, and the 96–224² cases pin the whole forward.

All weights are randomised (LayerNorms and relative-position tables included) and compared in float64 at 1e-5.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from vpetl.backbones import Backbone, create_backbone

Tensor = torch.Tensor
Triple = tuple[int, int, int]
ATOL = 1e-5


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random and O(1) in effect (identity LayerNorms and zero biases would hide mis-wiring)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
            if "relative_position_bias_table" in name:
                p.copy_(noise)  # O(1) biases on the attention scores
            elif p.dim() >= 2:
                p.copy_(noise / p[0].numel() ** 0.5)
            elif name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.2 * noise)


def ln(x: Tensor, mod: torch.nn.LayerNorm) -> Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + mod.eps) * mod.weight + mod.bias


def gelu(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def lin(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    return x @ w.T if b is None else x @ w.T + b


# --------------------------------------------------------------------------------- official algorithm
def get_window_size(x_size: Triple, window: Triple, shift: Triple) -> tuple[Triple, Triple]:
    use_w, use_s = list(window), list(shift)
    for i in range(3):
        if x_size[i] <= window[i]:
            use_w[i] = x_size[i]
            use_s[i] = 0
    return tuple(use_w), tuple(use_s)  # type: ignore[return-value]


def window_partition(x: Tensor, ws: Triple) -> Tensor:
    b, d, h, w, c = x.shape
    x = x.view(b, d // ws[0], ws[0], h // ws[1], ws[1], w // ws[2], ws[2], c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).contiguous().view(-1, ws[0] * ws[1] * ws[2], c)


def window_reverse(windows: Tensor, ws: Triple, b: int, d: int, h: int, w: int) -> Tensor:
    x = windows.view(b, d // ws[0], h // ws[1], w // ws[2], ws[0], ws[1], ws[2], -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).contiguous().view(b, d, h, w, -1)


def compute_mask(d: int, h: int, w: int, ws: Triple, ss: Triple) -> Tensor:
    img_mask = torch.zeros((1, d, h, w, 1), dtype=torch.float64)
    cnt = 0
    for ds in (slice(-ws[0]), slice(-ws[0], -ss[0]), slice(-ss[0], None)):
        for hs in (slice(-ws[1]), slice(-ws[1], -ss[1]), slice(-ss[1], None)):
            for wsl in (slice(-ws[2]), slice(-ws[2], -ss[2]), slice(-ss[2], None)):
                img_mask[:, ds, hs, wsl, :] = cnt
                cnt += 1
    mw = window_partition(img_mask, ws).squeeze(-1)  # (nW, N)
    m = mw.unsqueeze(1) - mw.unsqueeze(2)
    return m.masked_fill(m != 0, -100.0).masked_fill(m == 0, 0.0)


@functools.cache  # built once per window: the reference calls it in every block
def official_index(full: Triple) -> Tensor:
    """The official ``relative_position_index`` of the full window: (N_full, N_full)."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(s) for s in full], indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += full[0] - 1
    rel[:, :, 1] += full[1] - 1
    rel[:, :, 2] += full[2] - 1
    rel[:, :, 0] *= (2 * full[1] - 1) * (2 * full[2] - 1)
    rel[:, :, 1] *= 2 * full[2] - 1
    return rel.sum(-1)


@functools.cache
def geometric_index(ws: Triple, full: Triple) -> Tensor:
    """Row of the table for each (query, key) pair of a ``ws`` window: its 3D offset, as in the full window."""
    pts = [(d, h, w) for d in range(ws[0]) for h in range(ws[1]) for w in range(ws[2])]
    rows = []
    for a in pts:
        rows.append(
            [
                (a[0] - b[0] + full[0] - 1) * (2 * full[1] - 1) * (2 * full[2] - 1)
                + (a[1] - b[1] + full[1] - 1) * (2 * full[2] - 1)
                + (a[2] - b[2] + full[2] - 1)
                for b in pts
            ]
        )
    return torch.tensor(rows)


def official_sliced_index(ws: Triple, full: Triple) -> Tensor:
    """What the official ``WindowAttention3D`` uses for an effective window ``ws``: ``index[:N, :N]``."""
    n = ws[0] * ws[1] * ws[2]
    return official_index(full)[:n, :n]


INDEX = official_sliced_index  # the reference's index; a test swaps in the geometric one to show it matters


def window_attention(attn: torch.nn.Module, x: Tensor, ws: Triple, mask: Tensor | None) -> Tensor:
    b_, n, c = x.shape
    nh = attn.num_heads
    qkv = lin(x, attn.qkv.weight, attn.qkv.bias).reshape(b_, n, 3, nh, c // nh).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = q * (c // nh) ** -0.5
    a = q @ k.transpose(-2, -1)  # (B_, nH, N, N)
    idx = INDEX(ws, attn.window_size)
    bias = attn.relative_position_bias_table[idx.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)
    a = a + bias.unsqueeze(0)
    if mask is not None:
        nw = mask.shape[0]
        a = a.view(b_ // nw, nw, nh, n, n) + mask.unsqueeze(1).unsqueeze(0)
        a = a.view(-1, nh, n, n)
    a = torch.softmax(a, dim=-1)
    out = (a @ v).transpose(1, 2).reshape(b_, n, c)
    return lin(out, attn.proj.weight, attn.proj.bias)


def swin_block(blk: torch.nn.Module, x: Tensor, mask: Tensor, shift: Triple) -> Tensor:
    b, d, h, w, c = x.shape
    ws, ss = get_window_size((d, h, w), blk.window_size, shift)
    shortcut = x
    x = ln(x, blk.norm1)
    pd, pb, pr = (ws[0] - d % ws[0]) % ws[0], (ws[1] - h % ws[1]) % ws[1], (ws[2] - w % ws[2]) % ws[2]
    x = F.pad(x, (0, 0, 0, pr, 0, pb, 0, pd))
    _, dp, hp, wp, _ = x.shape
    if any(i > 0 for i in ss):
        x = torch.roll(x, shifts=(-ss[0], -ss[1], -ss[2]), dims=(1, 2, 3))
        attn_mask: Tensor | None = mask
    else:
        attn_mask = None
    windows = window_attention(blk.attn, window_partition(x, ws), ws, attn_mask)
    x = window_reverse(windows.view(-1, *ws, c), ws, b, dp, hp, wp)
    if any(i > 0 for i in ss):
        x = torch.roll(x, shifts=ss, dims=(1, 2, 3))
    x = shortcut + x[:, :d, :h, :w, :]
    hn = ln(x, blk.norm2)
    return x + lin(gelu(lin(hn, blk.mlp.fc1.weight, blk.mlp.fc1.bias)), blk.mlp.fc2.weight, blk.mlp.fc2.bias)


def patch_merging(pm: torch.nn.Module, x: Tensor) -> Tensor:
    _, _, h, w, _ = x.shape
    if h % 2 == 1 or w % 2 == 1:
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
    x0, x1 = x[:, :, 0::2, 0::2, :], x[:, :, 1::2, 0::2, :]
    x2, x3 = x[:, :, 0::2, 1::2, :], x[:, :, 1::2, 1::2, :]
    return lin(ln(torch.cat([x0, x1, x2, x3], -1), pm.norm), pm.reduction.weight)


def reference_tokens(bb: Backbone, x: Tensor) -> Tensor:
    """(B, 3, T, H, W) -> final-normed (B, D', H', W', C)."""
    cfg = bb.config
    p = cfg.patch_size
    _, _, t, h, w = x.shape
    if w % p[2]:
        x = F.pad(x, (0, p[2] - w % p[2]))
    if h % p[1]:
        x = F.pad(x, (0, 0, 0, p[1] - h % p[1]))
    if t % p[0]:
        x = F.pad(x, (0, 0, 0, 0, 0, p[0] - t % p[0]))
    pe = bb.patch_embed
    x = F.conv3d(x, pe.proj.weight, pe.proj.bias, stride=p)  # (B, C, D, Wh, Ww)
    x = ln(x.permute(0, 2, 3, 4, 1), pe.norm)  # LN over C == the official flatten/transpose/norm/view
    half = tuple(i // 2 for i in cfg.window_size)
    for stage in bb.layers:
        _, d, h, w, _ = x.shape
        ws, ss = get_window_size((d, h, w), cfg.window_size, half)  # type: ignore[arg-type]
        dp, hp, wp = (math.ceil(s / k) * k for s, k in zip((d, h, w), ws, strict=True))
        mask = compute_mask(dp, hp, wp, ws, ss)
        for j, blk in enumerate(stage.blocks):
            x = swin_block(blk, x, mask, (0, 0, 0) if j % 2 == 0 else half)  # type: ignore[arg-type]
        if stage.downsample is not None:
            x = patch_merging(stage.downsample, x)
    return ln(x, bb.norm)


# ------------------------------------------------------------------------------------------------ tests
CASES = [
    # (overrides, frames, size): the registered tiny spec (stage grids 2×14², 2×7², 2×4², 2×2²; shift (0,3,3) in
    # stage 0, H/W clamped below 7 later, odd 7 -> 4 merge padding); 48² (stage 0 padded 12 -> 14 with a shift, so
    # padded tokens meet the mask); a (2,7,7) window on 8 frames (D not clamped: a temporal shift of 1 and two
    # windows in depth); 5 frames of 40×52 (input padded to the patch in T and W, non-square grids).
    ({}, 4, 56),
    ({}, 4, 48),
    ({"window_size": (2, 7, 7)}, 8, 56),
    ({"window_size": (2, 3, 3)}, 5, 40),
]


@pytest.mark.parametrize(("overrides", "frames", "size"), CASES)
def test_swin3d_matches_official_algorithm(overrides: dict, frames: int, size: int) -> None:
    bb = create_backbone("swin3d-tiny", **overrides).double()
    randomize(bb, seed=11)
    g = torch.Generator().manual_seed(5)
    w = size + 12 if frames == 5 else size
    x = torch.randn(2, 3, frames, size, w, generator=g, dtype=torch.float64)
    want = reference_tokens(bb, x)
    with torch.no_grad():
        got = bb.forward_tokens(x)
        pooled = bb(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(pooled, want.mean(dim=(1, 2, 3)), atol=ATOL, rtol=0)  # final LN, then mean


def test_reference_is_sensitive_to_the_shift_and_the_bias(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison has teeth: dropping the mask or changing the position bias in the reference moves the
    output by far more than the tolerance."""
    bb = create_backbone("swin3d-tiny").double()
    randomize(bb, seed=11)
    x = torch.randn(1, 3, 4, 48, 48, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        got = bb.forward_tokens(x)
    blk = bb.layers[0].blocks[1]
    table = blk.attn.relative_position_bias_table
    with torch.no_grad():
        saved = table.clone()
        table.add_(1.0)  # a constant shift of one row set would cancel in softmax; perturb only some rows
        table[: table.shape[0] // 2].sub_(1.0)
        assert (reference_tokens(bb, x) - got).abs().max() > 1e-3
        table.copy_(saved)
    torch.testing.assert_close(reference_tokens(bb, x), got, atol=ATOL, rtol=0)
    official = compute_mask
    monkeypatch.setitem(globals(), "compute_mask", lambda *args: official(*args) * 0)  # no mask at all
    assert (reference_tokens(bb, x) - got).abs().max() > 1e-3


@pytest.mark.parametrize("ws", [(8, 7, 7), (4, 7, 7), (2, 7, 7), (1, 7, 7)])
def test_official_slice_is_geometric_for_depth_clamping(ws: Triple) -> None:
    """Where only the depth is clamped the official ``index[:N, :N]`` equals the geometric index used above."""
    n = ws[0] * ws[1] * ws[2]
    assert torch.equal(official_index((8, 7, 7))[:n, :n], geometric_index(ws, (8, 7, 7)))


def test_official_slice_differs_for_spatial_clamping() -> None:
    """…and where H/W are clamped (96–160² inputs) it does not: the two definitions are really different there."""
    n = 2 * 4 * 4
    assert not torch.equal(official_index((8, 7, 7))[:n, :n], geometric_index((2, 4, 4), (8, 7, 7)))


def test_backbone_index_is_the_official_slice() -> None:
    from vpetl.backbones.swin3d import relative_position_index

    for ws in [(8, 7, 7), (4, 7, 7), (4, 3, 3), (4, 5, 5), (2, 4, 4), (1, 6, 6), (4, 7, 5)]:
        assert torch.equal(relative_position_index(ws, (8, 7, 7)), official_sliced_index(ws, (8, 7, 7)))


# Swin-B's window (8,7,7) and patch (2,4,4) on the tiny widths, 8 frames (T' = 4: depth clamped in every stage):
# 96² has stage grids 24, 12, 6, 3 (H/W clamped in stages 2-3), 112²: 28, 14, 7, 4 (stage 3), 160²: 40, 20, 10,
# 5 (stage 3, stage 2 padded 10 -> 14 with a shift), 224²: 56, 28, 14, 7 (no spatial clamping).
@pytest.mark.parametrize("size", [96, 112, 160, 224])
def test_swin3d_official_index_at_paper_sizes(size: int) -> None:
    bb = create_backbone("swin3d-tiny").double()
    assert bb.config.window_size == (8, 7, 7) and bb.config.patch_size == (2, 4, 4)
    randomize(bb, seed=13)
    x = torch.randn(1, 3, 8, size, size, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    want = reference_tokens(bb, x)
    with torch.no_grad():
        got = bb.forward_tokens(x)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_geometric_index_would_differ_where_hw_clamp(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison above has teeth: a reference with the geometric index is far off at 96² (where the official
    slice is not geometric; at 224² the two agree, ``test_official_slice_is_geometric_for_depth_clamping``)."""
    size = 96
    bb = create_backbone("swin3d-tiny").double()
    randomize(bb, seed=13)
    x = torch.randn(1, 3, 8, size, size, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    with torch.no_grad():
        got = bb.forward_tokens(x)
    monkeypatch.setitem(globals(), "INDEX", geometric_index)
    gap = float((reference_tokens(bb, x) - got).abs().max())
    assert gap > 1e-3, gap


def test_shift_mask_matches_official() -> None:
    """The mask the backbone caches equals the official ``compute_mask`` for a shifted padded grid."""
    from vpetl.backbones.swin3d import shift_attention_mask

    for padded, ws, ss in [((2, 14, 14), (2, 7, 7), (0, 3, 3)), ((4, 14, 14), (2, 7, 7), (1, 3, 3))]:
        want = compute_mask(*padded, ws, ss)
        got = shift_attention_mask(padded, ws, ss, torch.device("cpu"))
        torch.testing.assert_close(got.double(), want, atol=0, rtol=0)
        assert (want == -100).any()
