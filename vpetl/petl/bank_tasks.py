"""One task's adapter, decoded for the AdapterBank: per-block components in a canonical, scale-folded form.

Canonical components (what the bank's hook adapter knows how to mix in one forward):

- ``patt``: down/up of PATT with ``s`` folded into up (``s·(W z + b) = (sW) z + s b``), slots per ``positions``;
- ``adaptmlp.parallel`` / ``adaptmlp.sequential``: AdaptMLP with ``s`` folded into up;
- ``lora``: ``{t}.A``, ``{t}.B`` per target (q, k, v, proj, fc1, fc2) with ``α/r`` folded into B;
- ``st_adapter.pre_attn`` / ``st_adapter.pre_mlp``: ST-Adapter as trained;
- ``bitfit``: bias deltas ``task − frozen`` per hooked op (q, k, v, norm1, proj, norm2, fc1, fc2; ``patch`` on
  block 0 for the patch-embedding bias) plus a pooled-feature delta (the final norm's bias).

Folding changes results only by float rounding (≪ 1e-4). Tasks whose method has no canonical form on this backbone
(prefix, VPT, DualPath, BitFit on Swin) are marked ``mixable=False`` and run as per-task sub-batches with their own
adapters attached for the duration of the sub-batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vpetl.backbones.base import Backbone
from vpetl.errors import IncompatibleAdapter, VpetlError
from vpetl.petl.base import Method, MethodAdapter, MethodConfig
from vpetl.petl.lora import LORA_TARGETS
from vpetl.petl.registry import get_method, method_config_from_dict

Tensor = torch.Tensor
Component = dict[str, Tensor]

MIXABLE_METHODS = {"patt", "adaptmlp", "bapat", "lora", "st_adapter", "linear", "bitfit"}
_BITFIT_OPS = {
    "attn.q_bias": "q",
    "attn.v_bias": "v",
    "norm1.bias": "norm1",
    "norm2.bias": "norm2",
    "attn.proj.bias": "proj",
    "mlp.fc1.bias": "fc1",
    "mlp.fc2.bias": "fc2",
}


@dataclass
class TaskAdapter:
    """A validated, decoded adapter ready for the bank. ``nbytes`` counts every tensor it keeps."""

    task: str
    version: int
    sha256: str
    method: str
    config: MethodConfig
    labels: list[str]
    head_weight: Tensor  # (K, F)
    head_bias: Tensor  # (K,)
    blocks: dict[int, dict[str, Component]] = field(default_factory=dict)
    patt_positions: tuple[str, ...] = ()
    lora_targets: tuple[str, ...] = ()
    pooled_bias: Tensor | None = None  # (F,) BitFit delta of the final norm's bias
    mixable: bool = True
    # Sub-batch path (mixable=False): the method's own adapters (detached) and in-place backbone parameters.
    method_obj: Method | None = None
    detached: list[tuple[int, MethodAdapter]] = field(default_factory=list)
    backbone_params: dict[str, Tensor] = field(default_factory=dict)
    nbytes: int = 0

    @property
    def key(self) -> tuple[str, int]:
        return (self.task, self.version)

    @property
    def num_classes(self) -> int:
        return int(self.head_weight.shape[0])


_shape_cache: dict[tuple[str, str, int, str, str], dict[str, tuple[int, ...]]] = {}


def expected_shapes(backbone: Backbone, config: MethodConfig, num_classes: int) -> dict[str, tuple[int, ...]]:
    """Stable name -> shape an adapter file must hold; cached per (backbone, its input spec, config, classes) so
    a cold load does not build modules just to learn shapes. The input spec is part of the key because
    ``check_backbone`` depends on it (DualPath needs enough frames per clip), not only the weights."""
    import json

    spec = backbone.input_spec.model_dump_json()
    key = (backbone.sha256(), json.dumps(config.to_dict(), sort_keys=True), num_classes, backbone.name, spec)
    if key not in _shape_cache:
        method = get_method(config.method)(config)
        method.check_backbone(backbone)
        shapes: dict[str, tuple[int, ...]] = {}
        for index, adapter in method.build_block_adapters(backbone):
            for name, p in adapter.weights().items():
                shapes[f"blocks.{index}.{adapter.component}.{name}"] = tuple(p.shape)
        for name in method.trainable_backbone_parameters(backbone):
            shapes[f"backbone.{name}"] = tuple(backbone.get_parameter(name).shape)
        shapes["head.weight"] = (num_classes, method.feature_dim(backbone))
        shapes["head.bias"] = (num_classes,)
        _shape_cache[key] = shapes
    return dict(_shape_cache[key])


def _scaled(t: Tensor, scale: Tensor | float) -> Tensor:
    """``scale · t`` for a load-time fold. On CPU the product is taken in numpy: a one-off elementwise op on a
    few-MB tensor would otherwise wake torch's OpenMP pool, which costs milliseconds on a busy 2-core host."""
    if isinstance(scale, Tensor):
        scale = float(scale.reshape(()))
    if scale == 1.0:
        return t
    if t.device.type == "cpu" and t.dtype == torch.float32:
        return torch.from_numpy(t.numpy() * np.float32(scale))
    return t * scale


def _fold_up(weights: Mapping[str, Tensor], scale: Tensor | float) -> Component:
    """``s·Up(z)`` -> ``Up'(z)`` with ``Up' = s·Up`` (weight and bias)."""
    out = dict(weights)
    out["up.weight"] = _scaled(weights["up.weight"], scale)
    if "up.bias" in weights:
        out["up.bias"] = _scaled(weights["up.bias"], scale)
    return out


def _split_blocks(tensors: Mapping[str, Tensor]) -> dict[int, dict[str, Component]]:
    """``blocks.{i}.{component}.{suffix}`` -> {i: {component: {suffix: tensor}}}."""
    out: dict[int, dict[str, Component]] = {}
    for name, t in tensors.items():
        if not name.startswith("blocks."):
            continue
        _, index, component, suffix = name.split(".", 3)
        out.setdefault(int(index), {}).setdefault(component, {})[suffix] = t
    return out


def _bitfit_mixable(backbone: Backbone) -> bool:
    if backbone.family == "video_vit":
        return True
    if backbone.family == "image_vit":
        return not getattr(backbone.config, "pre_norm", False)  # a bias delta before ln_pre does not commute
    return False  # Swin: patch-embed norm and patch-merging norms sit between biases and any hook


def _canonical_bitfit(task: TaskAdapter, backbone: Backbone, tensors: Mapping[str, Tensor]) -> None:
    frozen = dict(backbone.named_parameters())
    for name, t in tensors.items():
        if not name.startswith("backbone."):
            continue
        path = name[len("backbone.") :]
        delta = t - frozen[path].detach()
        if path == "patch_embed.proj.bias":
            task.blocks.setdefault(0, {}).setdefault("bitfit", {})["patch"] = delta
        elif path in ("fc_norm.bias", "norm.bias"):
            task.pooled_bias = delta
        elif path.startswith("blocks."):
            _, index, rest = path.split(".", 2)
            ops = task.blocks.setdefault(int(index), {}).setdefault("bitfit", {})
            if rest in _BITFIT_OPS:
                ops[_BITFIT_OPS[rest]] = delta
            elif rest == "attn.qkv.bias":  # fused layout (image ViT): rows q, k, v
                ops["q"], ops["k"], ops["v"] = delta.chunk(3)
            else:
                raise IncompatibleAdapter(f"bitfit parameter {path!r} has no hook in the engine")
        else:
            raise IncompatibleAdapter(f"bitfit parameter {path!r} has no hook in the engine")


def decode_task(
    backbone: Backbone,
    task: str,
    version: int,
    sha256: str,
    meta: Any,
    arrays: Mapping[str, np.ndarray],
    device: torch.device,
    dtype: torch.dtype,
) -> TaskAdapter:
    """Turn a validated artifact (meta + numpy tensors) into a :class:`TaskAdapter` on ``device``."""
    try:
        config = method_config_from_dict(meta.method_config, error=IncompatibleAdapter)
    except VpetlError as e:
        raise IncompatibleAdapter(f"adapter for task {task!r}: {e.message}") from e
    method = get_method(config.method)
    if not method.servable:
        raise IncompatibleAdapter(f"method {config.method!r} produces a whole model, not a servable adapter")
    tensors = {k: torch.from_numpy(np.require(v, requirements="C")).to(device, dtype) for k, v in arrays.items()}
    out = TaskAdapter(
        task=task,
        version=version,
        sha256=sha256,
        method=config.method,
        config=config,
        labels=list(meta.labels),
        head_weight=tensors["head.weight"],
        head_bias=tensors["head.bias"],
    )
    out.nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    name = config.method
    mixable = name in MIXABLE_METHODS and (name != "bitfit" or _bitfit_mixable(backbone))
    if not mixable:
        method_obj = method(config)
        with torch.random.fork_rng(devices=[]):
            detached = method_obj.build_block_adapters(backbone)
        for index, adapter in detached:
            adapter.to(device, dtype).eval()
            own = {f"blocks.{index}.{adapter.component}.{k}": p for k, p in adapter.weights().items()}
            with torch.no_grad():
                for key, p in own.items():
                    p.copy_(tensors[key])
                    p.requires_grad_(False)
        out.mixable, out.method_obj, out.detached = False, method_obj, detached
        out.backbone_params = {k[len("backbone.") :]: t for k, t in tensors.items() if k.startswith("backbone.")}
        return out

    blocks = _split_blocks(tensors)
    for index, comps in blocks.items():
        canon: dict[str, Component] = {}
        if "patt" in comps:
            w = comps["patt"]
            scale = w.pop("scale") if "scale" in w else getattr(config, "scale", 0.8)
            canon["patt"] = _fold_up(w, scale)
            out.patt_positions = tuple(config.positions)  # type: ignore[attr-defined]
        if "adaptmlp" in comps:
            mode = getattr(config, "mlp_mode", None) or getattr(config, "mode", "parallel")
            scale = getattr(config, "mlp_scale", None) if name == "bapat" else getattr(config, "scale", 0.1)
            canon[f"adaptmlp.{mode}"] = _fold_up(comps["adaptmlp"], scale)
        if "lora" in comps:
            w = comps["lora"]
            scaling = config.scaling  # type: ignore[attr-defined]
            targets = sorted({k.split(".")[0] for k in w}, key=LORA_TARGETS.index)
            canon["lora"] = {k: (_scaled(t, scaling) if k.endswith(".B") else t) for k, t in w.items()}
            out.lora_targets = tuple(targets)
        if "st_adapter" in comps:
            w = comps["st_adapter"]
            for where in ("pre_attn", "pre_mlp"):
                part = {k[len(where) + 1 :]: t for k, t in w.items() if k.startswith(where + ".")}
                if part:
                    canon[f"st_adapter.{where}"] = part
        out.blocks[index] = canon
    if name == "bitfit":
        _canonical_bitfit(out, backbone, tensors)
    return out
