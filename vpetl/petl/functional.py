"""The adapter term of every method as a pure function of (input, weights): one place where the math lives.

The trainable block adapters (``vpetl.petl.<method>``) call these functions with their own parameters; the
mixed-task engine calls the *same* functions with per-sample stacks gathered from many tasks, so training and
serving cannot drift apart (DESIGN.md, "The mixed-task engine").

Conventions shared by every function here:

- ``weights`` is a mapping keyed by the method's stable tensor-name suffixes (``"down.weight"``, ``"q.A"``, …: the
  part after ``blocks.{i}.{method}.`` in an adapter file), so an engine can pass an artifact's tensors straight in.
- A weight is either one task's tensor (e.g. a down projection ``(d, C)``) or a per-sample stack with a leading
  batch dim (``(B, d, C)``). Stacks apply to the rows of sample ``b``; rows of one sample are contiguous
  (``R = B · rows_per_sample``: windows of a Swin clip, frames of a per-frame ViT clip), so a stack is applied by
  reshaping the input to ``(B, rows_per_sample · N, C)`` and one ``bmm``/``baddbmm`` — no ``repeat_interleave`` of
  the weights, which would copy them once per row.
- ``scale`` is a float, a 0-d tensor (a learnable scale), or a per-sample ``(B,)`` tensor.
- Bottlenecks zero-padded to a common width give the same result (tanh(0) = ReLU(0) = GELU(0) = 0, and a zero
  column of an up projection adds nothing), so tasks of different width can share one stack.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
Weights = Mapping[str, Tensor]
Scale = float | Tensor

_ACTIVATIONS = {"relu": F.relu, "tanh": torch.tanh, "gelu": F.gelu}
QKV_SLOTS = ("q", "k", "v")


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weightᵀ + bias`` for one task's weight or a per-sample stack.

    Args:
        x: (R, ..., C_in) with R = B · rows_per_sample, rows of one sample contiguous.
        weight: (C_out, C_in), or a stack (B, C_out, C_in).
        bias: None, (C_out,), or a stack (B, C_out).

    Returns:
        (R, ..., C_out).
    """
    if weight.dim() == 2:
        return F.linear(x, weight, bias)
    b = weight.shape[0]
    if x.shape[0] % b:
        raise ValueError(f"{x.shape[0]} rows cannot be split evenly over a stack of {b} samples")
    lead = x.shape[:-1]
    xs = x.reshape(b, -1, x.shape[-1])  # (B, rows·N, C_in): one GEMM per sample covers all of its rows
    wt = weight.transpose(1, 2)  # (B, C_in, C_out)
    y = torch.bmm(xs, wt) if bias is None else torch.baddbmm(bias.unsqueeze(1), xs, wt)  # (B, rows·N, C_out)
    return y.reshape(*lead, -1)  # (R, ..., C_out)


def scaled(y: Tensor, scale: Scale) -> Tensor:
    """``scale · y`` where scale is a float, a 0-d tensor, or per-sample (B,) over the R = B·rows rows of ``y``."""
    if not isinstance(scale, Tensor):
        return y * scale
    if scale.dim() == 0:
        return y * scale.to(y.dtype)
    b = scale.shape[0]
    if y.shape[0] % b:
        raise ValueError(f"{y.shape[0]} rows cannot be split evenly over {b} per-sample scales")
    per_row = scale.to(y.dtype).repeat_interleave(y.shape[0] // b)  # (R,): R scalars, not R weight copies
    return y * per_row.reshape(-1, *([1] * (y.dim() - 1)))  # broadcast over (R, ...)


def expand_rows(t: Tensor, rows: int) -> Tensor:
    """A per-sample (B, n, C) tensor repeated for each of its rows -> (R, n, C); a shared (n, C) is left as is."""
    if t.dim() == 2:
        return t
    return t.repeat_interleave(rows // t.shape[0], dim=0)  # (R, n, C)


def sub(weights: Weights, prefix: str) -> dict[str, Tensor]:
    """The entries of ``weights`` under ``prefix.`` with the prefix removed (``sub(w, "q")["A"] is w["q.A"]``)."""
    head = prefix + "."
    return {k[len(head):]: v for k, v in weights.items() if k.startswith(head)}


def bottleneck(x: Tensor, weights: Weights, act: str) -> Tensor:
    """``Up(act(Down(x)))`` with ``down.{weight,bias}`` and ``up.{weight,bias}`` (biases optional).

    Args:
        x: (R, N, C).
        weights: down.weight (d, C) / (B, d, C); up.weight (C_out, d) / (B, C_out, d); optional biases.
        act: "relu", "tanh" or "gelu" (all map 0 to 0, so zero-padded bottlenecks are exact).

    Returns:
        (R, N, C_out).
    """
    z = linear(x, weights["down.weight"], weights.get("down.bias"))  # (R, N, d)
    z = _ACTIVATIONS[act](z)
    return linear(z, weights["up.weight"], weights.get("up.bias"))  # (R, N, C_out)


# ----------------------------------------------------------------------------------------------------------- PATT
def patt_qkv(
    h: Tensor, q: Tensor, k: Tensor, v: Tensor, weights: Weights, *, scale: Scale, positions: Sequence[str]
) -> tuple[Tensor, Tensor, Tensor]:
    """PATT (V-PETL Eq. 9–10): ``P = W_up · tanh(W_down · h + b_down) + b_up``; slot j of P is added to q/k/v.

    Args:
        h: (R, N, C) exactly what the frozen q/k/v projections saw (LN1 output; per window on Swin).
        q, k, v: (R, N, C) frozen projections (after their biases, before the head split).
        weights: down.weight (d, C), down.bias (d,), up.weight (P·C, d), up.bias (P·C,), or their (B, …) stacks.
        scale: s (0.8 by default in the config).
        positions: the P slots in canonical q, k, v order; output channels [j·C, (j+1)·C) go to slot j.

    Returns:
        The adapted (q, k, v).
    """
    p = scaled(bottleneck(h, weights, "tanh"), scale)  # (R, N, P·C)
    parts = dict(zip(positions, p.chunk(len(positions), dim=-1), strict=True))  # slot -> (R, N, C)
    return (
        q + parts["q"] if "q" in parts else q,
        k + parts["k"] if "k" in parts else k,
        v + parts["v"] if "v" in parts else v,
    )


# ------------------------------------------------------------------------------------------------------ AdaptMLP
def adaptmlp(h: Tensor, m: Tensor, weights: Weights, *, scale: Scale, mode: str = "parallel") -> Tensor:
    """AdaptMLP (AdaptFormer): the MLP branch output with the adapter term added.

    Args:
        h: (R, N, C) LN2(x), the MLP input.
        m: (R, N, C) MLP(h), the frozen branch.
        weights: down.weight (r, C), down.bias (r,), up.weight (C, r), up.bias (C,), or (B, …) stacks.
        scale: s (0.1 by default).
        mode: "parallel" — ``m + s·Up(ReLU(Down(h)))``; "sequential" — the adapter after the MLP with its own
            residual, ``m + s·Up(ReLU(Down(m)))`` (AdaptFormer's sequential form).

    Returns:
        (R, N, C) the branch output, before the block's residual add.
    """
    source = h if mode == "parallel" else m
    return m + scaled(bottleneck(source, weights, "relu"), scale)


# ---------------------------------------------------------------------------------------------------------- LoRA
def lora_delta(x: Tensor, weights: Weights, *, scale: Scale) -> Tensor:
    """``scale · B A x`` with A (r, C_in) and B (C_out, r) (or (B, …) stacks); scale = α / r of the true rank."""
    return scaled(linear(linear(x, weights["A"]), weights["B"]), scale)  # (R, N, C_out)


def lora_qkv(
    h: Tensor, q: Tensor, k: Tensor, v: Tensor, weights: Weights, *, scale: Scale, targets: Sequence[str]
) -> tuple[Tensor, Tensor, Tensor]:
    """LoRA on the q/k/v projections: ``y_t = W_t h + (α/r) B_t A_t h`` for each target t (keys ``t.A``, ``t.B``)."""
    out = {"q": q, "k": k, "v": v}
    for t in targets:
        out[t] = out[t] + lora_delta(h, sub(weights, t), scale=scale)
    return out["q"], out["k"], out["v"]


# -------------------------------------------------------------------------------------------------------- BitFit
def add_bias(y: Tensor, bias: Tensor) -> Tensor:
    """A bias delta on ``y`` (R, ..., C): (C,) for one task or (B, C) per sample.

    BitFit trains the backbone's own biases in place (``backbone.<path>`` names); an engine that serves BitFit
    tasks in a mixed batch adds ``task_bias − frozen_bias`` with this function where the backbone exposes a hook.
    """
    if bias.dim() == 1:
        return y + bias
    b = bias.shape[0]
    per_row = bias.repeat_interleave(y.shape[0] // b, dim=0)  # (R, C)
    return y + per_row.reshape(per_row.shape[0], *([1] * (y.dim() - 2)), -1)  # broadcast over (R, ..., C)


# -------------------------------------------------------------------------------------------------------- Prefix
def prefix_kv(weights: Weights, rows: int) -> tuple[Tensor, Tensor]:
    """Prefix-tuning's reparameterised key/value tokens: ``fc2(tanh(fc1(E)))`` split into K and V.

    Args:
        weights: embedding.weight (n, C), fc1.weight (d, C), fc1.bias (d,), fc2.weight (2C, d), fc2.bias (2C,),
            or (B, …) stacks.
        rows: R, the rows of the attention call (a stack is repeated for each row of its sample; on Swin a task's
            prefix is shared by all windows of a clip).

    Returns:
        (k, v), each (n, C) for one task (the block broadcasts it over rows) or (R, n, C) for a stack.
    """
    e = weights["embedding.weight"]  # (n, C) or (B, n, C)
    z = torch.tanh(linear(e, weights["fc1.weight"], weights["fc1.bias"]))  # (…, n, d)
    kv = linear(z, weights["fc2.weight"], weights["fc2.bias"])  # (…, n, 2C)
    k, v = kv.chunk(2, dim=-1)
    return expand_rows(k, rows), expand_rows(v, rows)


# ----------------------------------------------------------------------------------------------------------- VPT
def vpt_insert(x: Tensor, prompts: Tensor, at: int) -> Tensor:
    """Insert prompt tokens after the first ``at`` tokens (after CLS on a ViT with CLS).

    Args:
        x: (R, N, C).
        prompts: (n, C) for one task or (B, n, C) per sample.
        at: token index where the prompts go.

    Returns:
        (R, N + n, C).
    """
    rows = x.shape[0]
    p = prompts.unsqueeze(0).expand(rows, -1, -1) if prompts.dim() == 2 else expand_rows(prompts, rows)  # (R, n, C)
    return torch.cat([x[:, :at], p.to(x.dtype), x[:, at:]], dim=1)


def vpt_remove(x: Tensor, num_tokens: int, at: int) -> Tensor:
    """Drop the ``num_tokens`` prompts that :func:`vpt_insert` put at ``at``: (R, N + n, C) -> (R, N, C)."""
    return torch.cat([x[:, :at], x[:, at + num_tokens:]], dim=1)


# --------------------------------------------------------------------------------------------------- ST-Adapter
def st_adapter(
    x: Tensor, weights: Weights, *, frames: int, grid_hw: tuple[int, int], num_prefix_tokens: int
) -> Tensor:
    """ST-Adapter on the patch tokens of a per-frame ViT: ``x_patch += fc2(DWConv3D(fc1(x_patch)))``.

    Args:
        x: (B·T, P + H·W, C) per-frame tokens, frames of a clip contiguous; the P prefix (CLS) tokens pass unchanged.
        weights: fc1.weight (Ca, C), fc1.bias (Ca,), conv.weight (Ca, 1, k, 1, 1), conv.bias (Ca,),
            fc2.weight (C, Ca), fc2.bias (C,), or (B, …) stacks.
        frames: T.
        grid_hw: (H, W) patch grid of a frame.
        num_prefix_tokens: P.

    Returns:
        (B·T, P + H·W, C).
    """
    rows = x.shape[0]
    b, t = rows // frames, frames
    gh, gw = grid_hw
    patches = x[:, num_prefix_tokens:]  # (B·T, HW, C)
    z = linear(patches, weights["fc1.weight"], weights["fc1.bias"])  # (B·T, HW, Ca)
    ca = z.shape[-1]
    z = z.reshape(b, t, gh, gw, ca).permute(0, 4, 1, 2, 3)  # (B, Ca, T, H, W)
    w, bias = weights["conv.weight"], weights["conv.bias"]
    pad = (w.shape[-3] // 2, 0, 0)
    if w.dim() == 5:  # one task: a depthwise conv over time
        z = F.conv3d(z, w, bias, padding=pad, groups=ca)  # (B, Ca, T, H, W)
    else:  # per-sample (B, Ca, 1, k, 1, 1): fold samples into channels, one grouped conv for the whole batch
        z = z.reshape(1, b * ca, t, gh, gw)  # (1, B·Ca, T, H, W)
        z = F.conv3d(z, w.reshape(b * ca, *w.shape[2:]), bias.reshape(b * ca), padding=pad, groups=b * ca)
        z = z.reshape(b, ca, t, gh, gw)  # (B, Ca, T, H, W)
    z = z.permute(0, 2, 3, 4, 1).reshape(rows, gh * gw, ca)  # (B·T, HW, Ca)
    delta = linear(z, weights["fc2.weight"], weights["fc2.bias"])  # (B·T, HW, C)
    return torch.cat([x[:, :num_prefix_tokens], patches + delta.to(x.dtype)], dim=1)


# ------------------------------------------------------------------------------------------------------ DualPath
def dualpath_adapter(x: Tensor, weights: Weights, *, scale: Scale) -> Tensor:
    """DualPath's bottleneck adapter term ``s · Up(GELU(Down(x)))`` (the caller adds it in parallel or serially)."""
    return scaled(bottleneck(x, weights, "gelu"), scale)


# ---------------------------------------------------------------------------------------------------------- Head
def head(features: Tensor, weights: Weights) -> Tensor:
    """The task head: (B, F) features -> (B, K) logits; weight (K, F) / (B, K, F), bias (K,) / (B, K)."""
    return linear(features, weights["weight"], weights.get("bias"))
