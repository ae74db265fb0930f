"""Merge a LoRA or BitFit adapter into the frozen weights, and undo it: single-task export with zero adapter cost.

Both methods are linear in the frozen weights, so one task's adapter folds into them exactly (up to float rounding):

- LoRA: ``W_t ← W_t + (α/r)·B_t A_t`` for every target op (PEFT's merge). q/k/v live in ``attn.q/k/v.weight``
  (VideoMAE's separate layout) or in rows ``[0:C) / [C:2C) / [2C:3C)`` of the fused ``attn.qkv.weight`` (image ViT,
  Swin: the order ``project_qkv`` chunks them in); proj / fc1 / fc2 are ``attn.proj`` / ``mlp.fc1`` / ``mlp.fc2``.
- BitFit: the trained biases replace the frozen ones (they are ``backbone.<path>`` tensors in the artifact).

The merged backbone plus the task head is then a plain model: the ONNX export of it has no adapter inputs at all.
A merge keeps the original values of every parameter it changes, so :func:`unmerge` restores them bit-exactly
(copies, not a subtraction, which would leave rounding residue of ~1e-7).

Other methods put a nonlinearity (PATT's tanh, AdaptMLP's ReLU, ST-Adapter's conv over time) or extra tokens
(prefix, VPT) between their weights and the frozen ones: they cannot fold, and :func:`merge_adapter` says so.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from vpetl.backbones.base import Backbone
from vpetl.errors import IncompatibleAdapter, UnsupportedMethod
from vpetl.petl.base import MethodConfig

Tensor = torch.Tensor

#: methods whose adapter folds into the frozen weights ("linear" is a head only: nothing to fold).
MERGEABLE = ("lora", "bitfit", "linear")
_LINEAR_OPS = {"proj": "attn.proj.weight", "fc1": "mlp.fc1.weight", "fc2": "mlp.fc2.weight"}


@dataclass
class MergeHandle:
    """What :func:`unmerge` needs: the original value of every backbone parameter the merge changed."""

    method: str
    saved: dict[str, Tensor] = field(default_factory=dict)


def _lora_target(backbone: Backbone, index: int, target: str) -> tuple[str, slice]:
    """Backbone parameter path and row slice of LoRA target ``target`` on block ``index``."""
    block = backbone.adaptable_blocks()[index]
    path = _block_paths(backbone)[index]
    if target in _LINEAR_OPS:
        return f"{path}.{_LINEAR_OPS[target]}", slice(None)
    attn = block.attn  # type: ignore[attr-defined]
    if hasattr(attn, "qkv"):  # fused layout: rows q, k, v of one (3C, C) weight
        c = block.dim  # type: ignore[attr-defined]
        j = "qkv".index(target)
        return f"{path}.attn.qkv.weight", slice(j * c, (j + 1) * c)
    return f"{path}.attn.{target}.weight", slice(None)


def _block_paths(backbone: Backbone) -> list[str]:
    """Module path of every adaptable block, in ``adaptable_blocks()`` order (e.g. ``blocks.3``,
    ``layers.2.blocks.7``)."""
    by_id = {id(m): name for name, m in backbone.named_modules()}
    return [by_id[id(block)] for block in backbone.adaptable_blocks()]


def merged_weights(backbone: Backbone, config: MethodConfig, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The new values of the backbone parameters a merge changes (pure: ``backbone`` is not modified).

    Args:
        backbone: the frozen backbone the adapter was trained on.
        config: the adapter's method config (``lora``, ``bitfit`` or ``linear``).
        state: the adapter's tensors under stable names (``blocks.{i}.lora.{t}.A``, ``backbone.<path>``, …), e.g.
            ``PetlModel.trainable_state_dict()`` or an artifact's tensors.

    Returns:
        Parameter path -> merged tensor (same dtype and device as the frozen parameter).

    Raises:
        UnsupportedMethod: a method whose adapter cannot fold into the weights.
        IncompatibleAdapter: a tensor that names no parameter of this backbone or has the wrong shape.
    """
    method = config.method
    if method not in MERGEABLE:
        raise UnsupportedMethod(
            f"method {method!r} cannot be merged into the frozen weights (only {', '.join(MERGEABLE)} are linear "
            "in them); serve it as an adapter instead"
        )
    params = dict(backbone.named_parameters())
    out: dict[str, Tensor] = {}
    if method == "lora":
        scaling = config.scaling  # type: ignore[attr-defined]
        for name, a in state.items():
            if not (name.startswith("blocks.") and name.endswith(".A")):
                continue
            _, index, _component, target, _ = name.split(".")
            b = state[name[:-2] + ".B"]
            path, rows = _lora_target(backbone, int(index), target)
            base = out.get(path, params[path].detach())
            delta = (b.to(torch.float32) @ a.to(torch.float32)) * scaling  # (out, in)
            if tuple(delta.shape) != tuple(base[rows].shape):
                raise IncompatibleAdapter(f"{name}: B·A is {tuple(delta.shape)}, {path} is {tuple(base[rows].shape)}")
            merged = base.clone()
            merged[rows] += delta.to(base.device, base.dtype)
            out[path] = merged
    elif method == "bitfit":
        for name, t in state.items():
            if not name.startswith("backbone."):
                continue
            path = name[len("backbone.") :]
            if path not in params or tuple(params[path].shape) != tuple(t.shape):
                raise IncompatibleAdapter(f"{name} does not match a parameter of backbone {backbone.name!r}")
            out[path] = t.detach().to(params[path].device, params[path].dtype).clone()
    return out


def merge_adapter(backbone: Backbone, config: MethodConfig, state: Mapping[str, Tensor]) -> MergeHandle:
    """Fold one adapter into ``backbone``'s parameters in place; keep the originals for :func:`unmerge`.

    The backbone's cached ``sha256()`` is left as it was: it names the frozen backbone adapters are checked against,
    and :func:`unmerge` brings those weights back. Use :func:`merged_copy` for a backbone to hash or export.
    Raises as :func:`merged_weights`; nothing is changed then.
    """
    new = merged_weights(backbone, config, state)  # every check before the first write
    handle = MergeHandle(config.method)
    with torch.no_grad():
        for path, value in new.items():
            p = backbone.get_parameter(path)
            handle.saved[path] = p.detach().clone()
            p.copy_(value)
    return handle


def unmerge(backbone: Backbone, handle: MergeHandle) -> None:
    """Restore every parameter :func:`merge_adapter` changed, bit-exactly."""
    with torch.no_grad():
        for path, value in handle.saved.items():
            backbone.get_parameter(path).copy_(value)
    handle.saved.clear()


def merged_copy(backbone: Backbone, config: MethodConfig, state: Mapping[str, Tensor]) -> Backbone:
    """A deep copy of ``backbone`` with the adapter merged (no adapters attached), its sha256 recomputed for the
    merged weights; ``backbone`` itself is untouched."""
    new = merged_weights(backbone, config, state)
    out = copy.deepcopy(backbone)
    for block in out.adaptable_blocks():
        for name in list(block.adapters):
            del block.adapters[name]
    with torch.no_grad():
        for path, value in new.items():
            out.get_parameter(path).copy_(value)
    out.sha256(refresh=True)
    return out.eval()
