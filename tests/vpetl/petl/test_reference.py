"""Hand-written reference maths for every PETL method, compared with what vpetl's model computes.

The other petl tests compare vpetl with itself (stacked vs single, bank vs model, ONNX vs torch): all of them go
through ``vpetl.petl.functional``, so a wrong sign or activation there passes them all. Here each adapter term is
written again from PETL_SPEC Part A in a few lines of plain tensor maths (nothing from ``vpetl.petl.functional``
or the backbone's layers is called), around a hand-written forward of the tiny backbone, and the logits (or one
block's output, on Swin) must agree to 1e-5 in float64.

Every parameter is randomised first, adapters and backbone alike: the zero-init up projections (AdaptMLP, LoRA's
B, ST-Adapter's conv, DualPath's up) would otherwise make every adapter term vanish and every mutant survive, and
identity LayerNorms / zero biases would hide a mis-wired bias.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from vpetl.backbones import Backbone, create_backbone
from vpetl.petl import PetlModel, create_model, make_config

Tensor = torch.Tensor
ATOL = 1e-5
K = 3  # classes
P = dict[str, Tensor]


# ------------------------------------------------------------------------------------------------- helpers
def randomize(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random and O(1) in effect; 0-d (learnable scales) in [0.5, 1.5)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
            if p.dim() == 0:
                p.copy_(0.5 + torch.rand((), generator=g, dtype=torch.float64))
            elif p.dim() >= 2:
                p.copy_(noise / p[0].numel() ** 0.5)
            elif name.endswith("weight"):  # LayerNorm scale
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.2 * noise)


def build(backbone: str, method: str, seed: int = 0, **options: Any) -> PetlModel:
    model = create_model(backbone, make_config(method, **options), K, seed=seed).double().eval()
    randomize(model, seed + 100)
    return model


def clip_for(bb: Backbone, batch: int = 2, seed: int = 7, size: int | None = None) -> Tensor:
    spec = bb.input_spec
    s = size or spec.size
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, spec.num_frames, s, s, generator=g, dtype=torch.float64)


def layer_norm(x: Tensor, w: Tensor, b: Tensor, eps: float) -> Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)  # biased variance, as LayerNorm
    return (x - mu) / torch.sqrt(var + eps) * w + b


def ln(x: Tensor, mod: torch.nn.LayerNorm) -> Tensor:
    return layer_norm(x, mod.weight, mod.bias, mod.eps)


def gelu(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))  # exact GELU (nn.GELU's default)


def lin(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    y = x @ w.T
    return y if b is None else y + b


def attention(q: Tensor, k: Tensor, v: Tensor, heads: int, bias: Tensor | None = None) -> Tensor:
    """softmax(q kᵀ/√hd + bias) v per head; q (..., N, C), k/v (..., M, C); heads are contiguous channel blocks."""
    hd = q.shape[-1] // heads

    def split(t: Tensor) -> Tensor:
        return t.reshape(*t.shape[:-1], heads, hd).transpose(-3, -2)  # (..., nH, N, hd)

    a = split(q) @ split(k).transpose(-1, -2) / math.sqrt(hd)
    if bias is not None:
        a = a + bias
    out = torch.softmax(a, dim=-1) @ split(v)  # (..., nH, N, hd)
    out = out.transpose(-3, -2)
    return out.reshape(*out.shape[:-2], -1)


def sincos(n: int, dim: int) -> Tensor:
    """VideoMAE's table: angle(p, j) = p / 10000^(2⌊j/2⌋/dim), sin on even j, cos on odd j."""
    rows = []
    for p in range(n):
        rows.append([(math.sin if j % 2 == 0 else math.cos)(p / 10000 ** (2 * (j // 2) / dim)) for j in range(dim)])
    return torch.tensor(rows, dtype=torch.float64)


# ------------------------------------------------------------------------------ reference ViT forward
# A ``Hooks`` object carries a method's hand-written terms; each is None when the method does not touch that point.
class Hooks:
    qkv: Callable[[int, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]] | None = None
    extra_kv: Callable[[int, int], tuple[Tensor, Tensor]] | None = None  # (block, rows) -> (R, n, C) each
    attn_out: Callable[[int, Tensor, Tensor], Tensor] | None = None  # (block, LN1 x, proj out) -> branch
    mlp_out: Callable[[int, Tensor, Tensor], Tensor] | None = None  # (block, LN2 x, MLP out) -> branch
    pre_attn: Callable[[int, Tensor], Tensor] | None = None
    attn_in: Callable[[int, Tensor], Tensor] | None = None  # (block, LN1 x) -> what attention reads
    pre_mlp: Callable[[int, Tensor], Tensor] | None = None
    prompts: Callable[[int], Tensor | None] | None = None  # tokens inserted before block i
    drop: Callable[[int], int] | None = None  # tokens dropped after block i


def ref_blocks(bb: Backbone, x: Tensor, hooks: Hooks, prefix_tokens: int) -> Tensor:
    """Pre-norm blocks ``x + Attn(LN1 x)``, ``x + MLP(LN2 x)`` with the method's terms at their spec'd places."""
    for i, blk in enumerate(bb.blocks):
        a = blk.attn
        if hooks.prompts is not None and (p := hooks.prompts(i)) is not None:
            p = p.unsqueeze(0).expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :prefix_tokens], p, x[:, prefix_tokens:]], dim=1)  # prompts after CLS
        if hooks.pre_attn is not None:
            x = hooks.pre_attn(i, x)
        h = ln(x, blk.norm1)
        if hooks.attn_in is not None:
            h = hooks.attn_in(i, h)
        if a.qkv_layout == "separate":  # VideoMAE: q/v biases, k without bias
            q, k, v = lin(h, a.q.weight, a.q_bias), lin(h, a.k.weight), lin(h, a.v.weight, a.v_bias)
        else:
            c = h.shape[-1]
            w, b = a.qkv.weight, a.qkv.bias
            q, k, v = lin(h, w[:c], b[:c]), lin(h, w[c : 2 * c], b[c : 2 * c]), lin(h, w[2 * c :], b[2 * c :])
        if hooks.qkv is not None:
            q, k, v = hooks.qkv(i, h, q, k, v)
        if hooks.extra_kv is not None:
            pk, pv = hooks.extra_kv(i, x.shape[0])
            k, v = torch.cat([pk, k], dim=1), torch.cat([pv, v], dim=1)
        y = lin(attention(q, k, v, a.num_heads), a.proj.weight, a.proj.bias)
        if hooks.attn_out is not None:
            y = hooks.attn_out(i, h, y)
        x = x + y
        if hooks.pre_mlp is not None:
            x = hooks.pre_mlp(i, x)
        h = ln(x, blk.norm2)
        m = lin(gelu(lin(h, blk.mlp.fc1.weight, blk.mlp.fc1.bias)), blk.mlp.fc2.weight, blk.mlp.fc2.bias)
        if hooks.mlp_out is not None:
            m = hooks.mlp_out(i, h, m)
        x = x + m
        if hooks.drop is not None and (n := hooks.drop(i)):
            x = torch.cat([x[:, :prefix_tokens], x[:, prefix_tokens + n :]], dim=1)
    return x


def ref_video_vit_features(bb: Backbone, x: Tensor, hooks: Hooks) -> Tensor:
    """VideoMAE: tubelet conv, + sin-cos table, blocks, mean over tokens, fc_norm."""
    pe = bb.patch_embed.proj
    t = F.conv3d(x, pe.weight, pe.bias, stride=pe.stride).flatten(2).transpose(1, 2)  # (B, N, C)
    t = t + sincos(t.shape[1], t.shape[2])
    t = ref_blocks(bb, t, hooks, prefix_tokens=0)
    return ln(t.mean(1), bb.fc_norm)


def ref_frame_vit_features(bb: Backbone, x: Tensor, hooks: Hooks) -> Tensor:
    """Per-frame ViT: conv patchify of each frame, CLS first, + learned positions, blocks, mean of CLS, LN."""
    b, _, t, h, w = x.shape
    pe = bb.patch_embed.proj
    frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, 3, h, w)
    tok = F.conv2d(frames, pe.weight, pe.bias, stride=pe.stride).flatten(2).transpose(1, 2)
    tok = torch.cat([bb.cls_token.expand(b * t, -1, -1), tok], dim=1) + bb.pos_embed
    tok = ref_blocks(bb, tok, hooks, prefix_tokens=1)
    return ln(tok[:, 0].reshape(b, t, -1).mean(1), bb.norm)


def head(model: PetlModel, feats: Tensor) -> Tensor:
    return lin(feats, model.head.weight, model.head.bias)


def weights(model: PetlModel) -> P:
    return {k: v.detach() for k, v in model.stable_named_parameters().items()}


# --------------------------------------------------------------------------------------- method terms
def patt_hooks(w: P, positions: tuple[str, ...], scale: Callable[[int], Tensor | float]) -> Hooks:
    """PATT: P = W_up·tanh(W_down·h + b_down) + b_up over all channels; slot j (channels j·C…) added as s·P_j."""
    hk = Hooks()

    def qkv(i: int, h: Tensor, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pre = f"blocks.{i}.patt."
        p = lin(
            torch.tanh(lin(h, w[pre + "down.weight"], w[pre + "down.bias"])), w[pre + "up.weight"], w[pre + "up.bias"]
        )
        c = h.shape[-1]
        out = {"q": q, "k": k, "v": v}
        for j, slot in enumerate(positions):
            out[slot] = out[slot] + scale(i) * p[..., j * c : (j + 1) * c]
        return out["q"], out["k"], out["v"]

    hk.qkv = qkv
    return hk


def adaptmlp_term(w: P, i: int, src: Tensor, s: float) -> Tensor:
    """AdaptMLP: s·Up(ReLU(Down(src)))."""
    pre = f"blocks.{i}.adaptmlp."
    z = torch.clamp(lin(src, w[pre + "down.weight"], w[pre + "down.bias"]), min=0)
    return s * lin(z, w[pre + "up.weight"], w[pre + "up.bias"])


def adaptmlp_hook(w: P, s: float, mode: str) -> Callable[[int, Tensor, Tensor], Tensor]:
    def mlp_out(i: int, h: Tensor, m: Tensor) -> Tensor:
        return m + adaptmlp_term(w, i, h if mode == "parallel" else m, s)  # parallel: input LN2(x)

    return mlp_out


def lora_hooks(w: P, targets: tuple[str, ...], scaling: float) -> Hooks:
    """LoRA: y_t = W_t h + (α/r)·B_t A_t h."""
    hk = Hooks()

    def qkv(i: int, h: Tensor, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = {"q": q, "k": k, "v": v}
        for t in targets:
            a, b = w[f"blocks.{i}.lora.{t}.A"], w[f"blocks.{i}.lora.{t}.B"]
            out[t] = out[t] + scaling * (h @ a.T @ b.T)
        return out["q"], out["k"], out["v"]

    hk.qkv = qkv
    return hk


def prefix_hooks(w: P) -> Hooks:
    """Prefix-tuning: [K_p | V_p] = fc2(tanh(fc1(E))) (n, 2C), concatenated to K and V along tokens."""
    hk = Hooks()

    def extra(i: int, rows: int) -> tuple[Tensor, Tensor]:
        pre = f"blocks.{i}.prefix."
        kv = lin(
            torch.tanh(lin(w[pre + "embedding.weight"], w[pre + "fc1.weight"], w[pre + "fc1.bias"])),
            w[pre + "fc2.weight"],
            w[pre + "fc2.bias"],
        )
        c = kv.shape[-1] // 2
        return kv[:, :c].expand(rows, -1, -1), kv[:, c:].expand(rows, -1, -1)

    hk.extra_kv = extra
    return hk


# ------------------------------------------------------------------------------------ video-ViT methods
VIDEO_CASES: list[tuple[str, dict[str, Any]]] = [
    ("patt", {"bottleneck": 8}),
    ("patt", {"bottleneck": 8, "positions": ("q", "v"), "scale": 0.3}),
    ("patt", {"bottleneck": 8, "positions": ("q", "k", "v"), "learnable_scale": True}),
    ("adaptmlp", {"bottleneck": 8, "scale": 0.7}),
    ("adaptmlp", {"bottleneck": 8, "scale": 0.7, "mode": "sequential"}),
    ("bapat", {"bottleneck": 8, "mlp_bottleneck": 6, "scale": 0.6, "mlp_scale": 0.4}),
    ("lora", {"rank": 4, "alpha": 10.0}),
    ("lora", {"rank": 4, "targets": ("k",)}),
    ("bitfit", {}),
    ("prefix", {"num_tokens": 3, "bottleneck": 8, "mlp_bottleneck": 5, "mlp_scale": 0.3}),
    ("prefix_plain", {"num_tokens": 3, "bottleneck": 8}),
    ("vpt", {"num_tokens": 3, "deep": True}),
    ("vpt", {"num_tokens": 3, "deep": False}),
]


def method_hooks(model: PetlModel, method: str, opts: dict[str, Any]) -> Hooks:
    """The hand-written terms of ``method`` (configured by ``opts``) reading the model's state by stable name."""
    w = weights(model)
    cfg = model.config
    if method == "patt":
        if cfg.learnable_scale:  # type: ignore[attr-defined]
            return patt_hooks(w, cfg.positions, lambda i: w[f"blocks.{i}.patt.scale"])  # type: ignore[attr-defined]
        return patt_hooks(w, cfg.positions, lambda i: cfg.scale)  # type: ignore[attr-defined]
    if method == "adaptmlp":
        hk = Hooks()
        hk.mlp_out = adaptmlp_hook(w, cfg.scale, cfg.mode)  # type: ignore[attr-defined]
        return hk
    if method == "bapat":
        hk = patt_hooks(w, cfg.positions, lambda i: cfg.scale)  # type: ignore[attr-defined]
        hk.mlp_out = adaptmlp_hook(w, cfg.mlp_scale, "parallel")  # type: ignore[attr-defined]
        return hk
    if method == "lora":
        rank = cfg.rank  # type: ignore[attr-defined]
        alpha = cfg.alpha if cfg.alpha is not None else rank  # type: ignore[attr-defined]
        return lora_hooks(w, cfg.targets, alpha / rank)  # type: ignore[attr-defined]
    if method == "bitfit":
        return Hooks()  # the biases live in the backbone; the plain forward reads them
    if method == "prefix_plain":
        return prefix_hooks(w)
    if method == "prefix":  # V-PETL Table 3's row: the prefix plus BAPAT's parallel AdaptMLP
        hk = prefix_hooks(w)
        hk.mlp_out = adaptmlp_hook(w, cfg.mlp_scale, cfg.mlp_mode)  # type: ignore[attr-defined]
        return hk
    if method == "vpt":
        hk = Hooks()
        n, depth = cfg.num_tokens, len(model.backbone.blocks)  # type: ignore[attr-defined]
        if cfg.deep:  # type: ignore[attr-defined]
            hk.prompts = lambda i: w[f"blocks.{i}.vpt.prompts"]
            hk.drop = lambda i: n
        else:  # shallow: block 0's prompts travel through every block and leave after the last
            hk.prompts = lambda i: w["blocks.0.vpt.prompts"] if i == 0 else None
            hk.drop = lambda i: n if i == depth - 1 else 0
        return hk
    raise AssertionError(method)


@pytest.mark.parametrize(("method", "opts"), VIDEO_CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(VIDEO_CASES)])
def test_video_vit_method_matches_reference(method: str, opts: dict[str, Any]) -> None:
    model = build("videomae-tiny", method, **opts)
    bb = model.backbone
    x = clip_for(bb)
    want = head(model, ref_video_vit_features(bb, x, method_hooks(model, method, opts)))
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    if method != "bitfit":  # the adapter terms carry weight: the reference without them is far off
        assert (head(model, ref_video_vit_features(bb, x, Hooks())) - want).abs().max() > 1e-3


@pytest.mark.parametrize("method", ["patt", "adaptmlp", "lora", "prefix", "vpt"])
def test_frame_vit_method_matches_reference(method: str) -> None:
    """The same terms on the per-frame ViT: rows are frames, a CLS token leads (VPT prompts go after it)."""
    opts: dict[str, Any] = {
        "patt": {"bottleneck": 8, "positions": ("q", "k", "v")},
        "adaptmlp": {"bottleneck": 8, "scale": 0.7},
        "lora": {"rank": 4, "alpha": 6.0, "targets": ("q", "k", "v")},
        "prefix": {"num_tokens": 2, "bottleneck": 8},
        "vpt": {"num_tokens": 2},
    }[method]
    model = build("vit-tiny", method, **opts)
    bb = model.backbone
    x = clip_for(bb)
    want = head(model, ref_frame_vit_features(bb, x, method_hooks(model, method, opts)))
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("tables", [True, False])
def test_bitfit_trains_exactly_the_biases(tables: bool) -> None:
    """BitFit: the trainable state is every backbone bias (Linear/Conv/LayerNorm biases, q_bias, v_bias), Swin's
    relative-position bias tables with ``position_tables`` (the default, as V-PETL Table 3's count), and the head;
    nothing else requires grad (the reference forward above reads those randomised biases)."""
    for name in ("videomae-tiny", "swin3d-tiny", "vit-tiny"):
        model = create_model(name, make_config("bitfit", position_tables=tables), K)
        trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
        want = {
            n
            for n, _ in model.backbone.named_parameters()
            if n.endswith(".bias")
            or n.endswith("q_bias")
            or n.endswith("v_bias")
            or (tables and n.endswith(".attn.relative_position_bias_table"))
        }
        assert trainable == want and want
        has_tables = any("relative_position_bias_table" in n for n in trainable)
        assert has_tables == (tables and name == "swin3d-tiny")
        assert set(model.stable_named_parameters()) == {f"backbone.{n}" for n in want} | {"head.weight", "head.bias"}


# ------------------------------------------------------------------------------------------ ST-Adapter
def st_term(w: P, pre: str, x: Tensor, frames: int, grid: int, k: int) -> Tensor:
    """x_patch += fc2(DWConv3D_(k,1,1)(fc1(x_patch))): a per-channel conv over time with zero padding k//2."""
    patches = x[:, 1:]
    z = lin(patches, w[pre + "fc1.weight"], w[pre + "fc1.bias"])  # (B·T, HW, Ca)
    bt, hw, ca = z.shape
    z = z.reshape(bt // frames, frames, hw, ca)  # (B, T, HW, Ca)
    kern = w[pre + "conv.weight"].reshape(ca, k)  # (Ca, k): depthwise, one temporal filter per channel
    out = torch.zeros_like(z) + w[pre + "conv.bias"]
    for t in range(frames):
        for j in range(k):
            src = t + j - k // 2
            if 0 <= src < frames:
                out[:, t] = out[:, t] + z[:, src] * kern[:, j]
    delta = lin(out.reshape(bt, hw, ca), w[pre + "fc2.weight"], w[pre + "fc2.bias"])
    return torch.cat([x[:, :1], patches + delta], dim=1)  # CLS unchanged


@pytest.mark.parametrize(
    "opts",
    [
        {"bottleneck": 8},
        {"bottleneck": 8, "positions": ("pre_attn", "pre_mlp"), "kernel_size": 3, "num_layers": 1},
        {"bottleneck": 6, "positions": ("pre_attn",), "kernel_size": 5},
    ],
)
def test_st_adapter_matches_reference(opts: dict[str, Any]) -> None:
    model = build("vit-tiny", "st_adapter", **opts)
    bb = model.backbone
    x = clip_for(bb)
    w, cfg = weights(model), model.config
    frames, grid = x.shape[2], bb.config.img_size // bb.config.patch_size
    depth = len(bb.blocks)
    layers = depth if cfg.num_layers is None else cfg.num_layers  # type: ignore[attr-defined]

    def at(position: str) -> Callable[[int, Tensor], Tensor]:
        def fn(i: int, t: Tensor) -> Tensor:
            if i < depth - layers or position not in cfg.positions:  # type: ignore[attr-defined]
                return t
            return st_term(w, f"blocks.{i}.st_adapter.{position}.", t, frames, grid, cfg.kernel_size)  # type: ignore

        return fn

    hk = Hooks()
    hk.pre_attn, hk.pre_mlp = at("pre_attn"), at("pre_mlp")
    want = head(model, ref_frame_vit_features(bb, x, hk))
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, atol=ATOL, rtol=0)
    assert (head(model, ref_frame_vit_features(bb, x, Hooks())) - want).abs().max() > 1e-3


# -------------------------------------------------------------------------------------------- DualPath
def segments(t: int, n: int) -> list[int]:
    """The first frame of each of n equal segments of a t-frame clip (Table A1's fixed-rate sampling)."""
    return [i * t // n for i in range(n)]


def framesets(x: Tensor, g: int, num: int) -> Tensor:
    """T_G·g² frames sampled by segments, each averaged over g×g pixel boxes, tiled row-major into a frame."""
    b, c, t, h, w = x.shape
    total = num * g * g
    idx = segments(t, total)
    out = torch.zeros(b, c, num, h, w, dtype=x.dtype)
    sh, sw = h // g, w // g
    for n in range(num):
        for r in range(g):
            for col in range(g):
                f = x[:, :, idx[n * g * g + r * g + col]]  # (B, C, H, W)
                small = f.reshape(b, c, sh, g, sw, g).mean(dim=(3, 5))  # box filter ×1/g
                out[:, :, n, r * sh : (r + 1) * sh, col * sw : (col + 1) * sw] = small
    return out


DUALPATH_CASES = [
    {"grid": 2, "num_framesets": 2, "spatial_frames": 8, "combine": "concat", "temporal_pre_attn": False},
    {"grid": 2, "num_framesets": 2, "spatial_frames": 8, "combine": "sum", "temporal_pre_attn": True},
    {"grid": 4, "num_framesets": 1, "spatial_frames": 8, "combine": "concat", "temporal_pre_attn": True},
    {"grid": 2, "num_framesets": 1, "spatial_frames": 5, "combine": "concat", "temporal_pre_attn": False},
]


@pytest.mark.parametrize("opts", DUALPATH_CASES, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_dualpath_matches_reference(opts: dict[str, Any]) -> None:
    from vpetl.protocol import InputSpec

    # vit-tiny (GELU, no ln_pre: the reference's frame ViT) served with 16-frame clips, as clip-vit-b16 is.
    spec = InputSpec(num_frames=16, sampling="uniform", size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    model = (
        create_model(
            create_backbone("vit-tiny", input_spec=spec),
            make_config("dualpath", bottleneck=8, scale=0.7, **opts),
            K,
            seed=0,
        )
        .double()
        .eval()
    )
    randomize(model, 100)
    bb = model.backbone
    x = clip_for(bb)
    assert x.shape[2] == 16
    w, s = weights(model), model.config.scale  # type: ignore[attr-defined]

    def term(i: int, which: str, src: Tensor) -> Tensor:
        pre = f"blocks.{i}.dualpath.{which}."
        return s * lin(
            gelu(lin(src, w[pre + "down.weight"], w[pre + "down.bias"])), w[pre + "up.weight"], w[pre + "up.bias"]
        )

    spatial = Hooks()  # parallel: beside attention (input LN1 x) and beside the MLP (input LN2 x)
    spatial.attn_out = lambda i, h, y: y + term(i, "spatial_attn", h)
    spatial.mlp_out = lambda i, h, m: m + term(i, "spatial_mlp", h)
    temporal = Hooks()  # serial: y + s·A(y) after attention and after the MLP (and before attention, SSv2)
    temporal.attn_out = lambda i, h, y: y + term(i, "temporal_attn", y)
    temporal.mlp_out = lambda i, h, m: m + term(i, "temporal_mlp", m)
    if opts["temporal_pre_attn"]:
        temporal.attn_in = lambda i, h: h + term(i, "temporal_pre_attn", h)
    fs = ref_frame_vit_features(bb, x[:, :, segments(16, opts["spatial_frames"])], spatial)
    ft = ref_frame_vit_features(bb, framesets(x, opts["grid"], opts["num_framesets"]), temporal)
    want = head(model, torch.cat([fs, ft], -1) if opts["combine"] == "concat" else fs + ft)
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, atol=ATOL, rtol=0)
    if opts["temporal_pre_attn"]:  # the fifth adapter carries weight: the reference without it is far off
        temporal.attn_in = None
        ft = ref_frame_vit_features(bb, framesets(x, opts["grid"], opts["num_framesets"]), temporal)
        without = head(model, torch.cat([fs, ft], -1) if opts["combine"] == "concat" else fs + ft)
        assert (without - want).abs().max() > 1e-3


def test_framesets_tile_row_major() -> None:
    """Frameset geometry on a clip whose frame t is the constant t: tile (r, c) holds frame idx[r·g + c]."""
    from vpetl.petl.dualpath import make_framesets

    x = torch.arange(8, dtype=torch.float64).reshape(1, 1, 8, 1, 1).expand(1, 3, 8, 8, 8).contiguous()
    got = make_framesets(x, 2, 1)
    torch.testing.assert_close(got, framesets(x, 2, 1))
    assert got[0, 0, 0, 0, 0] == 0 and got[0, 0, 0, 0, 4] == 2 and got[0, 0, 0, 4, 0] == 4 and got[0, 0, 0, 4, 4] == 6


# -------------------------------------------------------------------------------- Swin (one block each)
def rel_bias(table: Tensor, ws: tuple[int, int, int], full: tuple[int, int, int]) -> Tensor:
    """(nH, N, N) as the official Video Swin code: the full window's index (table row of each pair's 3D offset
    (Δd, Δh, Δw) + (full − 1), row-major) sliced ``[:N, :N]`` for an effective window of N tokens."""
    coords = [(d, h, w) for d in range(full[0]) for h in range(full[1]) for w in range(full[2])]
    n = ws[0] * ws[1] * ws[2]
    idx = torch.tensor(
        [
            [
                ((a[0] - b[0] + full[0] - 1) * (2 * full[1] - 1) + (a[1] - b[1] + full[1] - 1)) * (2 * full[2] - 1)
                + (a[2] - b[2] + full[2] - 1)
                for b in coords[:n]
            ]
            for a in coords[:n]
        ]
    )
    return table[idx].permute(2, 0, 1)


@pytest.mark.parametrize(
    ("method", "opts"),
    [
        ("patt", {"bottleneck": 8, "positions": ("q", "k", "v")}),
        ("lora", {"rank": 4, "alpha": 6.0}),
        ("prefix", {"num_tokens": 3, "bottleneck": 8}),
        ("bapat", {"bottleneck": 8, "mlp_bottleneck": 6, "scale": 0.6, "mlp_scale": 0.4}),
        ("adaptmlp", {"bottleneck": 8, "scale": 0.7}),
    ],
)
def test_swin_block_methods_match_reference(method: str, opts: dict[str, Any]) -> None:
    """On Video Swin each block's window attention (PATT/LoRA per window, prefixes broadcast to every window with
    no position bias, shift mask on the scores) and MLP branch (AdaptMLP on LN2 x) are recomputed from the tensors
    the block saw, captured with forward hooks."""
    model = build("swin3d-tiny", method, **opts)
    bb = model.backbone
    x = clip_for(bb)
    hooks = method_hooks(model, method, opts)
    seen: dict[str, list[Any]] = {"attn": [], "norm2": [], "block": []}
    handles = []
    for blk in bb.adaptable_blocks():
        handles.append(blk.attn.register_forward_hook(lambda m, a, o: seen["attn"].append((m, a, o))))
        handles.append(blk.norm2.register_forward_hook(lambda m, a, o: seen["norm2"].append((a[0], o))))
        handles.append(blk.register_forward_hook(lambda m, a, o: seen["block"].append((m, a[0], o))))
    with torch.no_grad():
        model(x)
    for hd in handles:
        hd.remove()
    blocks = bb.adaptable_blocks()
    assert len(seen["attn"]) == len(blocks)
    for i, blk in enumerate(blocks):
        mod, (h, ws, mask, nw, *_), out = seen["attn"][i]
        c = h.shape[-1]
        q, k, v = (lin(h, mod.qkv.weight[j * c : (j + 1) * c], mod.qkv.bias[j * c : (j + 1) * c]) for j in range(3))
        if hooks.qkv is not None:
            q, k, v = hooks.qkv(i, h, q, k, v)
        bias = rel_bias(mod.relative_position_bias_table, ws, mod.window_size)  # (nH, N, N)
        bias = bias.unsqueeze(0).expand(h.shape[0], -1, -1, -1)  # (B·nW, nH, N, N)
        if mask is not None:
            bias = bias + mask.repeat(h.shape[0] // nw, 1, 1).unsqueeze(1)  # window r of a clip gets mask[r % nW]
        if hooks.extra_kv is not None:
            pk, pv = hooks.extra_kv(i, h.shape[0])
            k, v = torch.cat([pk, k], 1), torch.cat([pv, v], 1)
            bias = F.pad(bias, (pk.shape[1], 0))  # prefix keys: no position bias, never masked
        want = lin(attention(q, k, v, mod.num_heads, bias), mod.proj.weight, mod.proj.bias)
        torch.testing.assert_close(out, want, atol=ATOL, rtol=0)
        # MLP branch: block output = y + MLP(LN2 y) (+ the method's term), y the post-attention stream.
        y, hn = seen["norm2"][i]
        torch.testing.assert_close(hn, ln(y, blk.norm2), atol=ATOL, rtol=0)
        m = lin(gelu(lin(hn, blk.mlp.fc1.weight, blk.mlp.fc1.bias)), blk.mlp.fc2.weight, blk.mlp.fc2.bias)
        if hooks.mlp_out is not None:
            m = hooks.mlp_out(i, hn, m)
        _, _, block_out = seen["block"][i]
        torch.testing.assert_close(block_out.reshape(y.shape), y + m, atol=ATOL, rtol=0)
    assert any(a[1][2] is not None for a in seen["attn"])  # a shifted block (with its mask) was among them
