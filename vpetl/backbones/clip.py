"""OpenAI CLIP / open_clip visual-tower weights -> vpetl's ``clip-vit-b16`` (:class:`FrameViT`), strictly.

The key table below is the one place CLIP names are mapped. The layouts agree tensor for tensor: CLIP's fused
``in_proj_weight`` has rows q, k, v like vpetl's fused ``qkv``; only ``class_embedding`` (C,) and
``positional_embedding`` (1 + g², C) gain leading unit dimensions. CLIP's ``proj`` (C -> 512, into the joint
image-text space) is dropped: the video heads of ST-Adapter and DualPath read the ``ln_post`` output.

Accepted containers: the visual tower's own state dict (``model.visual.state_dict()``: ``conv1.weight``, …), or a
whole CLIP model from OpenAI CLIP or open_clip (visual keys under ``visual.``; the text tower is dropped). The
conversion is strict: a missing official key, a key it does not know, or a bias on the patch conv (a timm ViT,
not CLIP) raises :class:`CheckpointError` naming the official keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from vpetl.errors import CheckpointError

Tensor = torch.Tensor
StateDict = dict[str, Tensor]

VISUAL_PREFIX = "visual."
# (CLIP name, vpetl name) outside the blocks; ``proj`` is listed in DROPPED.
CLIP_TOP: tuple[tuple[str, str], ...] = (
    ("conv1.weight", "patch_embed.proj.weight"),
    ("class_embedding", "cls_token"),
    ("positional_embedding", "pos_embed"),
    ("ln_pre.weight", "norm_pre.weight"),
    ("ln_pre.bias", "norm_pre.bias"),
    ("ln_post.weight", "norm.weight"),
    ("ln_post.bias", "norm.bias"),
)
# (CLIP suffix under ``transformer.resblocks.{i}.``, vpetl suffix under ``blocks.{i}.``).
CLIP_BLOCK: tuple[tuple[str, str], ...] = (
    ("ln_1.weight", "norm1.weight"),
    ("ln_1.bias", "norm1.bias"),
    ("attn.in_proj_weight", "attn.qkv.weight"),
    ("attn.in_proj_bias", "attn.qkv.bias"),
    ("attn.out_proj.weight", "attn.proj.weight"),
    ("attn.out_proj.bias", "attn.proj.bias"),
    ("ln_2.weight", "norm2.weight"),
    ("ln_2.bias", "norm2.bias"),
    ("mlp.c_fc.weight", "mlp.fc1.weight"),
    ("mlp.c_fc.bias", "mlp.fc1.bias"),
    ("mlp.c_proj.weight", "mlp.fc2.weight"),
    ("mlp.c_proj.bias", "mlp.fc2.bias"),
)
DROPPED = frozenset({"proj"})
_BLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")
_TOP = dict(CLIP_TOP)
_BLOCK_MAP = dict(CLIP_BLOCK)


def is_clip_visual(sd: Mapping[str, object]) -> bool:
    """Telltale keys of a CLIP visual tower (bare, or under ``visual.`` in a whole CLIP model)."""
    return any(k in sd for k in ("class_embedding", "visual.class_embedding", "visual.conv1.weight")) or (
        "conv1.weight" in sd and any(str(k).startswith("transformer.resblocks.") for k in sd)
    )


def _visual_tower(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    if any(k.startswith(VISUAL_PREFIX) for k in sd):
        # A whole CLIP model: the text tower (transformer.*, token_embedding, ln_final, …) is not ours.
        return {k[len(VISUAL_PREFIX) :]: v for k, v in sd.items() if k.startswith(VISUAL_PREFIX)}
    return dict(sd)


def _shown(keys: list[str]) -> str:
    return ", ".join(keys[:8]) + (f", … ({len(keys)} in all)" if len(keys) > 8 else "")


def convert_clip_visual(sd: Mapping[str, Tensor]) -> StateDict:
    """CLIP visual-tower keys -> vpetl ``FrameViT`` keys (see the module docstring).

    Raises:
        CheckpointError: official keys missing (named, e.g. ``transformer.resblocks.3.ln_2.bias``), keys that are
            not part of a CLIP visual tower, or blocks that are not numbered 0 … L−1.
    """
    visual = _visual_tower(sd)
    out: StateDict = {}
    unknown: list[str] = []
    blocks: dict[int, set[str]] = {}
    for key, value in visual.items():
        if key in DROPPED:
            continue
        if key in _TOP:
            if key == "class_embedding":
                value = value.reshape(1, 1, -1)  # (C,) -> (1, 1, C)
            elif key == "positional_embedding":
                value = value.unsqueeze(0)  # (1 + g², C) -> (1, 1 + g², C)
            out[_TOP[key]] = value
            continue
        m = _BLOCK.fullmatch(key)
        if m and m.group(2) in _BLOCK_MAP:
            index = int(m.group(1))
            blocks.setdefault(index, set()).add(m.group(2))
            out[f"blocks.{index}.{_BLOCK_MAP[m.group(2)]}"] = value
            continue
        unknown.append(key)
    missing = [k for k in _TOP if k not in visual]
    depth = max(blocks) + 1 if blocks else 0
    for index in range(depth):
        have = blocks.get(index, set())
        missing += [f"transformer.resblocks.{index}.{s}" for s in _BLOCK_MAP if s not in have]
    if not blocks:
        missing.append("transformer.resblocks.0.*")
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing official keys: {_shown(missing)}")
        if unknown:
            hint = " (conv1.bias: a timm-style ViT, load it as vit-b16)" if "conv1.bias" in unknown else ""
            parts.append(f"keys that are not part of a CLIP visual tower: {_shown(sorted(unknown))}{hint}")
        raise CheckpointError("CLIP visual checkpoint: " + "; ".join(parts))
    return out


def to_clip_visual(sd: Mapping[str, Tensor]) -> StateDict:
    """The inverse: a ``clip-vit-b16`` frozen state dict -> CLIP visual-tower names and shapes (without ``proj``,
    which vpetl does not hold)."""
    top = {ours: theirs for theirs, ours in CLIP_TOP}
    block = {ours: theirs for theirs, ours in CLIP_BLOCK}
    out: StateDict = {}
    for key, value in sd.items():
        if key in top:
            if key == "cls_token":
                value = value.reshape(-1)  # (1, 1, C) -> (C,)
            elif key == "pos_embed":
                value = value.squeeze(0)  # (1, 1 + g², C) -> (1 + g², C)
            out[top[key]] = value
            continue
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
        if not m or m.group(2) not in block:
            raise CheckpointError(f"{key!r} has no CLIP visual-tower name (is this a clip-vit backbone?)")
        out[f"transformer.resblocks.{m.group(1)}.{block[m.group(2)]}"] = value
    return out
