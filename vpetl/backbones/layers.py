"""Generic layers shared by the backbones: MLP, multi-head attention with hooks, the pre-norm ViT block,
3D patch embedding, the fixed sin-cos position table, and weight init."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vpetl.backbones.hooks import AdaptableBlock, BlockContext

Tensor = torch.Tensor


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(..., N, C) -> (..., nH, N, hd); heads are contiguous channel blocks (head h = channels h·hd … (h+1)·hd−1)."""
    *lead, n, c = x.shape
    x = x.reshape(*lead, n, num_heads, c // num_heads)  # (..., N, nH, hd)
    return x.transpose(-3, -2)  # (..., nH, N, hd)


def merge_heads(x: Tensor) -> Tensor:
    """(..., nH, N, hd) -> (..., N, C)."""
    x = x.transpose(-3, -2)  # (..., N, nH, hd)
    return x.reshape(*x.shape[:-2], -1)  # (..., N, C)


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Softmax attention, (..., nH, N, hd) ×3 -> (..., nH, N, hd).

    Under CPU bf16 autocast (training on a CPU with native bf16) it runs in fp32: torch's CPU flash-attention
    kernel is slower in bf16 than in fp32 (its backward ~3× on the demo backbone's step, which is 8–11% faster
    with this; BENCHMARKS.md, "Demo"), while the projections around it keep bf16's faster matmuls.
    """
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    return F.scaled_dot_product_attention(q, k, v)


class QuickGELU(nn.Module):
    """CLIP's activation ``x · sigmoid(1.702 x)`` (OpenAI CLIP ``model.py``; open_clip's ``QuickGELU``): CLIP
    weights were trained with it, and the exact GELU differs by up to 0.02 per activation."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "quick_gelu": QuickGELU}


class Mlp(nn.Module):
    """fc1 -> activation (GELU, or CLIP's QuickGELU) -> fc2, with ``adapt_linear`` hooks after fc1 and fc2."""

    def __init__(self, dim: int, hidden: int, act: str = "gelu") -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; choose one of {sorted(ACTIVATIONS)}")
        self.fc1 = nn.Linear(dim, hidden)
        self.act = ACTIVATIONS[act]()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, h: Tensor, block: AdaptableBlock | None = None, ctx: BlockContext | None = None) -> Tensor:
        y = self.fc1(h)
        if block is not None and ctx is not None:
            y = block.hook_linear("fc1", h, y, ctx)
            z = self.act(y)
            return block.hook_linear("fc2", z, self.fc2(z), ctx)
        return self.fc2(self.act(y))


class ViTAttention(nn.Module):
    """Global multi-head self-attention over all tokens of a row.

    ``qkv_layout``:
      - ``"separate"`` (VideoMAE): q/k/v Linear without bias plus ``q_bias`` and ``v_bias`` parameters (k has none);
      - ``"fused"`` (timm / CLIP image ViT): one ``qkv`` Linear(C, 3C) with bias, rows ordered q, k, v.
    """

    def __init__(self, dim: int, num_heads: int, qkv_layout: str = "separate") -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.qkv_layout = dim, num_heads, qkv_layout
        if qkv_layout == "separate":
            self.q = nn.Linear(dim, dim, bias=False)
            self.k = nn.Linear(dim, dim, bias=False)
            self.v = nn.Linear(dim, dim, bias=False)
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        elif qkv_layout == "fused":
            self.qkv = nn.Linear(dim, 3 * dim)
        else:
            raise ValueError(f"unknown qkv_layout {qkv_layout!r}")
        self.proj = nn.Linear(dim, dim)

    def project_qkv(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The frozen projections: (R, N, C) -> three (R, N, C)."""
        if self.qkv_layout == "separate":
            return F.linear(h, self.q.weight, self.q_bias), self.k(h), F.linear(h, self.v.weight, self.v_bias)
        return self.qkv(h).chunk(3, dim=-1)

    def forward(self, h: Tensor, block: AdaptableBlock, ctx: BlockContext) -> Tensor:
        q, k, v = self.project_qkv(h)  # each (R, N, C)
        if block.adapters:
            q, k, v = block.hook_qkv(h, q, k, v, ctx)
            extra = block.hook_extra_kv(h, ctx)
            if extra is not None:
                k = torch.cat([extra[0], k], dim=1)  # (R, n + N, C)
                v = torch.cat([extra[1], v], dim=1)
        out = attention(split_heads(q, self.num_heads), split_heads(k, self.num_heads), split_heads(v, self.num_heads))
        out = merge_heads(out)  # (R, N, C)
        y = self.proj(out)
        return block.hook_linear("proj", out, y, ctx) if block.adapters else y


class ViTBlock(AdaptableBlock):
    """Pre-norm transformer block: ``x + Attn(LN1(x))`` then ``x + MLP(LN2(x))``, with every hook in place."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6,
        qkv_layout: str = "separate",
        act: str = "gelu",
    ) -> None:
        super().__init__()
        self.dim, self.num_heads = dim, num_heads
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = ViTAttention(dim, num_heads, qkv_layout)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act)
        self._init_adapters()

    def forward(self, x: Tensor, ctx: BlockContext) -> Tensor:
        if not self.adapters:  # fast path: the frozen backbone alone
            x = x + self.attn(self.norm1(x), self, ctx)
            return x + self.mlp(self.norm2(x))
        x = self.hook_x("pre_block", x, ctx)
        x = self.hook_x("pre_attn", x, ctx)
        h = self.hook_linear("norm1", x, self.norm1(x), ctx)
        x = x + self.attn(h, self, ctx)
        x = self.hook_x("pre_mlp", x, ctx)
        h = self.hook_linear("norm2", x, self.norm2(x), ctx)
        x = x + self.hook_mlp(h, self.mlp(h, self, ctx), ctx)
        return self.hook_x("post_block", x, ctx)


class PatchEmbed3D(nn.Module):
    """Conv3d patchify: (B, 3, T, H, W) -> (B, C, T/pt, H/ph, W/pw)."""

    def __init__(self, patch: tuple[int, int, int], in_chans: int, dim: int, norm: bool = False) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)  # (B, C, T', H', W')
        if self.norm is not None:
            b, c, t, h, w = x.shape
            x = self.norm(x.flatten(2).transpose(1, 2))  # (B, T'H'W', C)
            x = x.transpose(1, 2).reshape(b, c, t, h, w)  # (B, C, T', H', W')
        return x


class ConvStem3D(nn.Module):
    """A convolutional patchify: per-frame 3×3 stride-2 convolutions (+ ReLU), then a tubelet projection.

    (B, 3, T, H, W) -> (B, C, T/pt, H/ph, W/pw), the same token grid as :class:`PatchEmbed3D` with the same
    ``patch``; the convolutions take ``log2(ph / pw_last)`` of the spatial stride, ``proj`` the rest. Why: a ViT
    trained from scratch on a few thousand clips learns far faster on top of a few convolutions than on a linear
    patchify (Xiao et al. 2021, "Early convolutions help transformers see better"); measured for ``vpetl-demo`` in
    README, "Demo backbone".

    Served, it has no normalisation. Pretraining calls :meth:`add_batch_norm` (BatchNorm after every convolution,
    which is what makes it train fast) and :meth:`fold_batch_norm` before saving, which folds each BatchNorm's
    eval-mode affine map into its convolution exactly: the saved backbone is convolutions with biases only, so
    training adapters on it (``model.train()``) cannot move batch statistics of a frozen backbone.
    """

    def __init__(self, patch: tuple[int, int, int], in_chans: int, dim: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        pt, ph, pw = patch
        stride = 2 ** len(widths)
        if ph % stride or pw % stride:
            raise ValueError(f"{len(widths)} stride-2 stem convolutions do not divide the patch {ph}×{pw}")
        self.patch = patch
        chans = (in_chans, *widths)
        self.stem = nn.ModuleList(
            nn.Conv3d(a, b, kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
            for a, b in zip(chans[:-1], chans[1:], strict=True)
        )
        self.norms: nn.ModuleList | None = None
        rest = (pt, ph // stride, pw // stride)
        self.proj = nn.Conv3d(chans[-1], dim, kernel_size=rest, stride=rest)

    def forward(self, x: Tensor) -> Tensor:
        # The (1, 3, 3) convolutions see one frame at a time, so they run as 2-D convolutions over B·T frames in
        # channels-last layout, and the tubelet projection (kernel = stride) as one Linear over gathered tubelets:
        # the same maps as Conv3d, 6–7% faster per demo pretraining step on 2 CPU cores (mkldnn's Conv3d
        # backward was the largest single op of the step; BENCHMARKS.md, "Demo"). Parameters keep the Conv3d
        # shapes, so checkpoints and ONNX exports are unchanged.
        b, c, t, h, w = x.shape
        # (B, C, T, H, W) -> (B·T, C, H, W) with channels-last strides (one copy)
        y = x.permute(0, 2, 3, 4, 1).reshape(b * t, h, w, c).permute(0, 3, 1, 2)
        for i, conv in enumerate(self.stem):
            y = F.conv2d(y, conv.weight[:, :, 0], conv.bias, stride=2, padding=1)  # (B·T, C_i, H/2^(i+1), W/2^(i+1))
            if self.norms is not None:
                y = self.norms[i](y)
            y = F.relu(y)
        pt, ph, pw = self.proj.kernel_size
        _, width, hs, ws = y.shape
        t2, h2, w2 = t // pt, hs // ph, ws // pw
        y = y.permute(0, 2, 3, 1)  # (B·T, H_s, W_s, C_s), a free view of the channels-last tensor
        y = y.reshape(b, t2, pt, h2, ph, w2, pw, width)  # split every axis into (tubelet index, offset)
        y = y.permute(0, 1, 3, 5, 7, 2, 4, 6)  # (B, T', H', W', C_s, pt, ph, pw): the Conv3d weight's order
        y = y.reshape(b, t2, h2, w2, width * pt * ph * pw)  # (B, T', H', W', C_s·pt·ph·pw)
        out = F.linear(y, self.proj.weight.reshape(self.proj.out_channels, -1), self.proj.bias)  # (B, T', H', W', C)
        return out.permute(0, 4, 1, 2, 3)  # (B, C, T', H', W')

    def add_batch_norm(self) -> None:
        """Insert a (fresh) BatchNorm after every stem convolution, for training from scratch (2-D: the stem runs
        frame by frame, and statistics over B·T frames are BatchNorm3d's over (B, T))."""
        self.norms = nn.ModuleList(nn.BatchNorm2d(conv.out_channels) for conv in self.stem)
        self.norms.to(self.proj.weight.device)

    @torch.no_grad()
    def fold_batch_norm(self) -> None:
        """Fold each BatchNorm's running statistics and affine map into its convolution; drop the norms.

        BN(conv(x)) = γ · (W x + b − μ) / √(σ² + ε) + β = (s W) x + (s (b − μ) + β), with s = γ / √(σ² + ε).
        """
        if self.norms is None:
            return
        for conv, norm in zip(self.stem, self.norms, strict=True):
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)  # (C_out,)
            conv.weight.mul_(scale.view(-1, 1, 1, 1, 1))  # (C_out, C_in, 1, 3, 3): one scale per output channel
            conv.bias.copy_((conv.bias - norm.running_mean) * scale + norm.bias)
        self.norms = None


def sincos_position_table(num_tokens: int, dim: int) -> Tensor:
    """VideoMAE's fixed 1-D sin-cos table: angle(p, j) = p / 10000^(2⌊j/2⌋/dim); sin on even j, cos on odd j.

    Returns (num_tokens, dim) float32. Being 1-D, the table for n tokens is the first n rows of any longer table.
    """
    pos = torch.arange(num_tokens, dtype=torch.float64).unsqueeze(1)  # (N, 1)
    j = torch.arange(dim, dtype=torch.float64)
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)  # (N, dim)
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float()


def init_weights_vit(module: nn.Module) -> None:
    """timm-style init: trunc-normal(0.02) linears, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv3d | nn.Conv2d):
        fan_in = math.prod(module.weight.shape[1:])
        nn.init.trunc_normal_(module.weight, std=math.sqrt(1.0 / fan_in))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
