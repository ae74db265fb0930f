"""Per-frame image ViT: vpetl's forward against a reference written here from the ViT algorithm (Dosovitskiy et
al.; timm / CLIP layout): each frame patchified by a stride-p conv, CLS prepended, learned position embedding
added (bicubically resampled when the frame size differs from training, as timm's ``resample_abs_pos_embed``),
optional ``ln_pre``, pre-norm blocks ``x + Attn(LN1 x)``, ``x + MLP(LN2 x)`` with a fused qkv (rows q, k, v),
then the clip feature = LN(mean over frames of the CLS token). Nothing from ``vpetl.backbones`` layers is called.

All weights are randomised (LayerNorms, CLS and position embedding included), float64, 1e-5.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vpetl.backbones import Backbone, create_backbone

Tensor = torch.Tensor
ATOL = 1e-5


def randomize(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
            if name in ("cls_token", "pos_embed"):
                p.copy_(noise)
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


def lin(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    return x @ w.T + b


def attention(blk: torch.nn.Module, h: Tensor) -> Tensor:
    a = blk.attn
    r, n, c = h.shape
    nh = a.num_heads
    qkv = lin(h, a.qkv.weight, a.qkv.bias).reshape(r, n, 3, nh, c // nh).permute(2, 0, 3, 1, 4)  # (3, R, nH, N, hd)
    q, k, v = qkv[0], qkv[1], qkv[2]
    att = torch.softmax(q @ k.transpose(-2, -1) * (c // nh) ** -0.5, dim=-1)
    return lin((att @ v).transpose(1, 2).reshape(r, n, c), a.proj.weight, a.proj.bias)


def reference_tokens(bb: Backbone, x: Tensor) -> Tensor:
    cfg = bb.config
    b, _, t, h, w = x.shape
    p = cfg.patch_size
    frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, 3, h, w)  # each frame is an image
    pe = bb.patch_embed.proj
    tok = F.conv2d(frames, pe.weight, pe.bias, stride=p).flatten(2).transpose(1, 2)  # (B·T, HW, C), row-major
    tok = torch.cat([bb.cls_token.expand(b * t, -1, -1), tok], dim=1)
    pos = bb.pos_embed
    g = cfg.img_size // p
    if (h // p, w // p) != (g, g):
        grid = pos[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h // p, w // p), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])], dim=1)
    tok = tok + pos
    if cfg.pre_norm:
        tok = ln(tok, bb.norm_pre)
    for blk in bb.blocks:
        tok = tok + attention(blk, ln(tok, blk.norm1))
        hn = ln(tok, blk.norm2)
        tok = tok + lin(gelu(lin(hn, blk.mlp.fc1.weight, blk.mlp.fc1.bias)), blk.mlp.fc2.weight, blk.mlp.fc2.bias)
    return tok


@pytest.mark.parametrize(("overrides", "size"), [({}, 32), ({"pre_norm": True}, 32), ({}, 48), ({"depth": 3}, 32)])
def test_image_vit_matches_reference(overrides: dict, size: int) -> None:
    bb = create_backbone("vit-tiny", **overrides).double()
    randomize(bb, seed=21)
    x = torch.randn(2, 3, 3, size, size, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    want = reference_tokens(bb, x)
    with torch.no_grad():
        got = bb.forward_tokens(x)
        pooled = bb(x)
    assert got.shape == want.shape == (2 * 3, 1 + (size // 16) ** 2, 64)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    cls = want[:, 0].reshape(2, 3, -1).mean(1)  # mean over frames of the CLS token, then the final LN
    torch.testing.assert_close(pooled, ln(cls, bb.norm), atol=ATOL, rtol=0)


def test_frames_are_independent_images() -> None:
    """Per-frame: permuting the frames of a clip permutes the token rows and leaves the pooled feature unchanged."""
    bb = create_backbone("vit-tiny").double()
    randomize(bb, seed=21)
    x = torch.randn(1, 3, 4, 32, 32, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        torch.testing.assert_close(bb.forward_tokens(x[:, :, perm]), bb.forward_tokens(x)[perm], atol=ATOL, rtol=0)
        torch.testing.assert_close(bb(x[:, :, perm]), bb(x), atol=ATOL, rtol=0)
