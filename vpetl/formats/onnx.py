"""Export the frozen backbone as ONE ONNX graph whose adapter weights are graph inputs (for the edge).

The edge downloads the backbone graph once and then only small adapter files: every task of a method family runs
through the same graph, its (scale-folded) adapter tensors fed as inputs next to the clip. So a task switch on a
device is a new feed dict, never a new model (SERVING.md G10).

How: one :class:`ExportBlockAdapter` is attached to every block (like the bank's ``BankBlockAdapter``); the export
wrapper's ``forward(clip, weights)`` hands each block its tensors, the backbone runs, and the task head closes the
graph. Every adapter term comes from :mod:`vpetl.petl.functional` with ``scale=1`` — the same functions training and
serving call — on weights in the AdapterBank's canonical form: scales folded into the up projections (and LoRA's
``α/r`` into B) by :func:`vpetl.petl.bank_tasks.decode_task`, the code the server uses.

Graph inputs, per family (names are the adapter file's names; values are the *folded* tensors):

==========  ===================================================================================================
family      inputs besides ``clip`` (B, 3, T, H, W) and ``head.weight`` (K, F), ``head.bias`` (K,)
==========  ===================================================================================================
bapat       ``blocks.{i}.patt.{down,up}.{weight,bias}`` + ``blocks.{i}.adaptmlp.{down,up}.{weight,bias}``
patt        ``blocks.{i}.patt.{down,up}.{weight,bias}``
adaptmlp    ``blocks.{i}.adaptmlp.{down,up}.{weight,bias}``
lora        ``blocks.{i}.lora.{t}.{A,B}`` for t in the graph's targets
linear      only the head
==========  ===================================================================================================

Dynamic axes: batch, PATT bottleneck d, AdaptMLP r, LoRA rank and the class count K. PATT's up projection has one
C-row slot per graph position (q, k, v by default, so any adapter's positions fit; absent slots are zero rows) and
LoRA has every graph target (absent targets are zero A/B): zeros add exactly nothing. The metadata_props record the
input spec, the backbone name and sha256, the family, the input names and this layout (JSON), so the edge needs
nothing else to drive the graph.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vpetl import __version__
from vpetl.artifact import AdapterFile, check_compatible, read_adapter
from vpetl.backbones.base import Backbone
from vpetl.backbones.hooks import BlockAdapter, BlockContext
from vpetl.errors import IncompatibleAdapter, InvalidRequest, VpetlError
from vpetl.petl import functional as PF
from vpetl.petl.bank_tasks import TaskAdapter, decode_task, expected_shapes
from vpetl.petl.registry import method_config_from_dict

logger = logging.getLogger(__name__)

Tensor = torch.Tensor

ONNX_FORMAT = 1
FAMILIES = ("bapat", "patt", "adaptmlp", "lora", "linear")
#: adapter components each family's graph takes
FAMILY_COMPONENTS: dict[str, tuple[str, ...]] = {
    "bapat": ("patt", "adaptmlp"),
    "patt": ("patt",),
    "adaptmlp": ("adaptmlp",),
    "lora": ("lora",),
    "linear": (),
}
BOTTLENECK_SUFFIXES = ("down.weight", "down.bias", "up.weight", "up.bias")
CLIP_INPUT = "clip"
LOGITS_OUTPUT = "logits"
MAX_BATCH = 1024
MAX_WIDTH = 8192
MAX_CLASSES = 1 << 20
# Example widths for tracing: distinct from each other and from every static dim, so torch.export cannot confuse
# (or specialise) them.
_EXAMPLE = {"batch": 2, "patt": 11, "adaptmlp": 7, "lora": 5, "classes": 13}


@dataclass(frozen=True)
class GraphLayout:
    """What the graph takes: family, per-block widths, PATT slots, LoRA targets, AdaptMLP mode, input names.

    Serialised into the ONNX metadata (``layout``; the names go to ``input_names``) and read back by the edge
    runner (plain JSON, torch-free).
    """

    family: str
    block_dims: tuple[int, ...]
    num_features: int
    patt_positions: tuple[str, ...] = ()
    lora_targets: tuple[str, ...] = ()
    mlp_mode: str = "parallel"
    input_names: tuple[str, ...] = field(default=())

    @property
    def components(self) -> tuple[str, ...]:
        return FAMILY_COMPONENTS[self.family]

    def to_json(self) -> str:
        return json.dumps(
            {
                "family": self.family,
                "block_dims": list(self.block_dims),
                "num_features": self.num_features,
                "patt_positions": list(self.patt_positions),
                "lora_targets": list(self.lora_targets),
                "mlp_mode": self.mlp_mode,
            },
            sort_keys=True,
        )


def make_layout(
    backbone: Backbone,
    family: str,
    *,
    patt_positions: Sequence[str] = PF.QKV_SLOTS,
    lora_targets: Sequence[str] = PF.QKV_SLOTS,
    mlp_mode: str = "parallel",
) -> GraphLayout:
    """The graph layout for ``family`` on ``backbone`` (input names in feed order: clip, blocks, head)."""
    if family not in FAMILIES:
        raise InvalidRequest(f"unknown ONNX family {family!r}; choose one of: {', '.join(FAMILIES)}")
    if backbone.family != "video_vit":
        # The edge graph is built and parity-tested for video ViTs (the demo and VideoMAE backbones); Swin's
        # windowing and the per-frame ViT's frame folding have not been through the exporter.
        raise InvalidRequest(f"ONNX export supports video ViT backbones; {backbone.name!r} is {backbone.family}")
    for name, value in (("patt_positions", patt_positions), ("lora_targets", lora_targets)):
        if not value or not set(value) <= set(PF.QKV_SLOTS):
            raise InvalidRequest(f"{name} must be a non-empty subset of q, k, v, got {list(value)}")
    if mlp_mode not in ("parallel", "sequential"):
        raise InvalidRequest(f"mlp_mode must be parallel or sequential, got {mlp_mode!r}")
    comps = FAMILY_COMPONENTS[family]
    positions = tuple(s for s in PF.QKV_SLOTS if s in patt_positions) if "patt" in comps else ()
    targets = tuple(s for s in PF.QKV_SLOTS if s in lora_targets) if "lora" in comps else ()
    dims = tuple(int(block.dim) for block in backbone.adaptable_blocks())
    names: list[str] = [CLIP_INPUT]
    for i in range(len(dims)):
        for comp in comps:
            if comp == "lora":
                names += [f"blocks.{i}.lora.{t}.{m}" for t in targets for m in "AB"]
            else:
                names += [f"blocks.{i}.{comp}.{s}" for s in BOTTLENECK_SUFFIXES]
    names += ["head.weight", "head.bias"]
    return GraphLayout(
        family=family,
        block_dims=dims,
        num_features=int(backbone.num_features),
        patt_positions=positions,
        lora_targets=targets,
        mlp_mode=mlp_mode if "adaptmlp" in comps else "parallel",
        input_names=tuple(names),
    )


# ---------------------------------------------------------------------------------------------------- the graph
class ExportBlockAdapter(BlockAdapter):
    """One block's adapter terms from weights handed in per forward (``self.comps``, set by the wrapper).

    ``comps`` holds the canonical (scale-folded) components, so every term runs at ``scale=1.0``.
    """

    def __init__(self, layout: GraphLayout) -> None:
        super().__init__()
        self.layout = layout
        self.comps: dict[str, dict[str, Tensor]] = {}

    def adapt_qkv(
        self, h: Tensor, q: Tensor, k: Tensor, v: Tensor, ctx: BlockContext
    ) -> tuple[Tensor, Tensor, Tensor]:
        if "patt" in self.comps:
            q, k, v = PF.patt_qkv(h, q, k, v, self.comps["patt"], scale=1.0, positions=self.layout.patt_positions)
        if "lora" in self.comps:
            q, k, v = PF.lora_qkv(h, q, k, v, self.comps["lora"], scale=1.0, targets=self.layout.lora_targets)
        return q, k, v

    def adapt_mlp(self, h: Tensor, m: Tensor, ctx: BlockContext) -> Tensor:
        if "adaptmlp" in self.comps:
            return PF.adaptmlp(h, m, self.comps["adaptmlp"], scale=1.0, mode=self.layout.mlp_mode)
        return m


class ExportModel(nn.Module):
    """``forward(clip, weights) -> logits``: the frozen backbone with per-forward adapter weights and head.

    ``weights`` is a tuple in ``layout.input_names[1:]`` order. The backbone is used in place (hooks are attached
    to its blocks); call :meth:`detach` to remove them.
    """

    def __init__(self, backbone: Backbone, layout: GraphLayout) -> None:
        super().__init__()
        blocks = backbone.adaptable_blocks()
        if any(len(block.adapters) for block in blocks):
            raise InvalidRequest("the backbone already carries adapters; export a clean backbone")
        self.backbone, self.layout = backbone.eval(), layout
        self.hooks: list[ExportBlockAdapter] = []
        for block in blocks:
            hook = ExportBlockAdapter(layout)
            block.adapters["export"] = hook
            self.hooks.append(hook)

    def detach(self) -> Backbone:
        for block in self.backbone.adaptable_blocks():
            if "export" in block.adapters:
                del block.adapters["export"]
        return self.backbone

    def forward(self, clip: Tensor, weights: tuple[Tensor, ...]) -> Tensor:
        named = dict(zip(self.layout.input_names[1:], weights, strict=True))
        for i, hook in enumerate(self.hooks):
            prefix = f"blocks.{i}."
            comps: dict[str, dict[str, Tensor]] = {}
            for name, t in named.items():
                if name.startswith(prefix):
                    comp, suffix = name[len(prefix) :].split(".", 1)
                    comps.setdefault(comp, {})[suffix] = t
            hook.comps = comps
        try:
            features = self.backbone(clip)  # (B, F)
        finally:
            for hook in self.hooks:
                hook.comps = {}
        return PF.head(features, {"weight": named["head.weight"], "bias": named["head.bias"]})  # (B, K)


# ------------------------------------------------------------------------------------------------ graph inputs
def _feed_shapes(layout: GraphLayout, widths: Mapping[str, int], num_classes: int) -> dict[str, tuple[int, ...]]:
    """Concrete shape of every weight input for the given widths (patt / adaptmlp / lora) and class count."""
    shapes: dict[str, tuple[int, ...]] = {}
    slots = len(layout.patt_positions)
    for name in layout.input_names[1:]:
        if name.startswith("head."):
            shapes[name] = (num_classes, layout.num_features) if name.endswith("weight") else (num_classes,)
            continue
        _, index, comp, suffix = name.split(".", 3)
        c = layout.block_dims[int(index)]
        w = widths[comp]
        out = slots * c if comp == "patt" else c
        shapes[name] = {
            "down.weight": (w, c),
            "down.bias": (w,),
            "up.weight": (out, w),
            "up.bias": (out,),
        }.get(suffix) or ((w, c) if suffix.endswith(".A") else (c, w))
    return shapes


def _dynamic_shapes(layout: GraphLayout) -> tuple[Any, ...]:
    dim = torch.export.Dim
    batch = dim("batch", min=1, max=MAX_BATCH)
    width = {
        "patt": dim("patt_bottleneck", min=1, max=MAX_WIDTH),
        "adaptmlp": dim("mlp_bottleneck", min=1, max=MAX_WIDTH),
        "lora": dim("lora_rank", min=1, max=MAX_WIDTH),
    }
    classes = dim("num_classes", min=1, max=MAX_CLASSES)
    per_input: list[dict[int, Any] | None] = []
    for name in layout.input_names[1:]:
        if name.startswith("head."):
            per_input.append({0: classes})
            continue
        comp, suffix = name.split(".", 3)[2:]
        w = width[comp]
        per_input.append(
            {"down.weight": {0: w}, "down.bias": {0: w}, "up.weight": {1: w}, "up.bias": None}.get(suffix)
            if comp != "lora"
            else ({0: w} if suffix.endswith(".A") else {1: w})
        )
    return ({0: batch}, tuple(per_input))


def example_inputs(backbone: Backbone, layout: GraphLayout, *, seed: int = 0) -> tuple[Tensor, tuple[Tensor, ...]]:
    """A random clip batch and random weights of the example widths (what the exporter traces with)."""
    gen = torch.Generator().manual_seed(seed)
    spec = backbone.input_spec
    clip = torch.randn(_EXAMPLE["batch"], 3, spec.num_frames, spec.size, spec.size, generator=gen)
    shapes = _feed_shapes(layout, _EXAMPLE, _EXAMPLE["classes"])
    weights = tuple(0.05 * torch.randn(shapes[n], generator=gen) for n in layout.input_names[1:])
    return clip, weights


def _remap_rows(w: Tensor, have: Sequence[str], want: Sequence[str]) -> Tensor:
    """PATT up rows laid out for the adapter's slots -> the graph's slots (zero rows for absent slots)."""
    c = w.shape[0] // len(have)
    out = w.new_zeros((c * len(want), *w.shape[1:]))
    for j, slot in enumerate(have):
        i = list(want).index(slot)
        out[i * c : (i + 1) * c] = w[j * c : (j + 1) * c]
    return out


def task_feeds(layout: GraphLayout, task: TaskAdapter) -> dict[str, Tensor]:
    """Graph weight inputs from a decoded (scale-folded) :class:`TaskAdapter`: what the torch side feeds.

    Components the adapter lacks (a PATT adapter on a BAPAT graph) are zeros of width 1: exactly no change.
    Raises IncompatibleAdapter when the adapter cannot be expressed in this graph.
    """
    comps_needed = set(layout.components)
    feeds: dict[str, Tensor] = {}
    widths = {"patt": 1, "adaptmlp": 1, "lora": 1}
    for index, comps in task.blocks.items():
        for comp, weights in comps.items():
            base = comp.split(".")[0]
            if base not in comps_needed:
                raise IncompatibleAdapter(
                    f"a {task.method!r} adapter has {comp!r} terms; the {layout.family!r} graph has no input for them"
                )
            if base == "adaptmlp" and comp != f"adaptmlp.{layout.mlp_mode}":
                raise IncompatibleAdapter(f"the graph runs AdaptMLP {layout.mlp_mode}; the adapter uses {comp}")
            w = dict(weights)
            if base == "patt":
                if not set(task.patt_positions) <= set(layout.patt_positions):
                    raise IncompatibleAdapter(
                        f"PATT positions {task.patt_positions} are not all graph slots {layout.patt_positions}"
                    )
                w["up.weight"] = _remap_rows(w["up.weight"], task.patt_positions, layout.patt_positions)
                w["up.bias"] = _remap_rows(w["up.bias"], task.patt_positions, layout.patt_positions)
            if base == "lora" and not set(task.lora_targets) <= set(layout.lora_targets):
                raise IncompatibleAdapter(f"LoRA targets {task.lora_targets} are not all in {layout.lora_targets}")
            for suffix, t in w.items():
                feeds[f"blocks.{index}.{base}.{suffix}"] = t
            widths[base] = int(w["down.weight" if base != "lora" else next(k for k in w if k.endswith(".A"))].shape[0])
    shapes = _feed_shapes(layout, widths, task.num_classes)
    ref = task.head_weight
    out = {n: feeds.get(n, ref.new_zeros(shapes[n])) for n in layout.input_names[1:] if not n.startswith("head.")}
    out["head.weight"], out["head.bias"] = task.head_weight, task.head_bias
    for name, t in out.items():
        if tuple(t.shape) != shapes[name]:
            raise IncompatibleAdapter(
                f"{name}: shape {tuple(t.shape)} does not fit the graph (expected {shapes[name]})"
            )
    return out


def decode_adapter(backbone: Backbone, adapter: AdapterFile | bytes | str | Path) -> TaskAdapter:
    """Validate an adapter against ``backbone`` and decode it exactly as the server's bank does (scales folded)."""
    file = adapter if isinstance(adapter, AdapterFile) else read_adapter(adapter)
    try:
        config = method_config_from_dict(file.meta.method_config, error=IncompatibleAdapter)
        shapes = expected_shapes(backbone, config, file.meta.num_classes)
    except VpetlError as e:
        raise IncompatibleAdapter(f"adapter {file.sha256[:12]}: {e.message}") from e
    check_compatible(file, expected_shapes=shapes, backbone_sha256=backbone.sha256(), backbone_name=backbone.name)
    ref = next(backbone.parameters())
    return decode_task(backbone, file.meta.task, 1, file.sha256, file.meta, file.tensors, ref.device, ref.dtype)


# ------------------------------------------------------------------------------------------------------ export
def export_backbone_onnx(
    backbone: Backbone,
    family: str,
    path: str | Path,
    *,
    patt_positions: Sequence[str] = PF.QKV_SLOTS,
    lora_targets: Sequence[str] = PF.QKV_SLOTS,
    mlp_mode: str = "parallel",
    check: bool = True,
) -> dict[str, Any]:
    """Write the backbone as one ONNX graph with the ``family``'s adapter weights as inputs (one file, atomic).

    Args:
        backbone: the frozen backbone (hooks are attached for the export and removed afterwards).
        family: bapat, patt, adaptmlp, lora or linear.
        path: output ``.onnx`` file.
        patt_positions, lora_targets: the graph's PATT slots / LoRA targets (default all of q, k, v, so any
            adapter of the family fits).
        mlp_mode: the AdaptMLP mode the graph runs (parallel or sequential).
        check: run the file once in onnxruntime (if installed) against torch on the example inputs.

    Returns:
        The metadata written (``metadata_props``) plus ``size`` (bytes), ``path`` and ``max_abs_diff`` (the check).
    """
    layout = make_layout(backbone, family, patt_positions=patt_positions, lora_targets=lora_targets, mlp_mode=mlp_mode)
    if any(len(block.adapters) for block in backbone.adaptable_blocks()):
        backbone = _clean_copy(backbone)  # a serving backbone carries the bank's hooks: export a private copy
    for p in backbone.parameters():
        p.requires_grad_(False)
    model = ExportModel(backbone, layout)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        clip, weights = example_inputs(backbone, layout)
        with torch.no_grad():
            expected = model(clip, weights)  # eager first: also caches the position table as a constant
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            with warnings.catch_warnings(), _quiet_exporter():
                warnings.simplefilter("ignore")  # the exporter's axis-renaming and deprecation chatter
                program = torch.onnx.export(
                    model,
                    (clip, weights),
                    None,
                    input_names=list(layout.input_names),
                    output_names=[LOGITS_OUTPUT],
                    dynamic_shapes=_dynamic_shapes(layout),
                    external_data=False,
                    verbose=False,
                )
            assert program is not None
            metadata = onnx_metadata(backbone, layout)
            _write_model(program, metadata, tmp)
            diff = _check_onnx(tmp, clip, weights, layout, expected) if check else None
            os.chmod(tmp, 0o644)  # mkstemp makes it private; the graph is a public download
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    finally:
        model.detach()
    logger.info("exported %s (%s) to %s: %d bytes", backbone.name, family, path, path.stat().st_size)
    return {**metadata, "size": path.stat().st_size, "path": str(path), "max_abs_diff": diff}


def _clean_copy(backbone: Backbone) -> Backbone:
    """A deep copy without the adapters attached to its blocks (the cached sha256 is copied along)."""
    clone = copy.deepcopy(backbone)
    for block in clone.adaptable_blocks():
        block.adapters.clear()
    return clone


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs a warning per torchvision op it cannot register (vpetl never uses torchvision)."""
    log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def onnx_metadata(backbone: Backbone, layout: GraphLayout) -> dict[str, str]:
    """The metadata_props: everything the edge needs to preprocess clips and feed adapters (all JSON strings)."""
    return {
        "vpetl_onnx_format": str(ONNX_FORMAT),
        "vpetl_version": __version__,
        "torch_version": torch.__version__,
        "backbone": backbone.name,
        "backbone_sha256": backbone.sha256(),
        "family": layout.family,
        "input_spec": backbone.input_spec.model_dump_json(),
        "input_names": json.dumps(list(layout.input_names)),
        "output_names": json.dumps([LOGITS_OUTPUT]),
        "layout": layout.to_json(),
        "scales_folded": "true",
    }


def _write_model(program: Any, metadata: Mapping[str, str], path: str) -> None:
    import onnx

    proto = program.model_proto
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(proto, path)  # one file: the weights are initializers inside it (< 2 GB)


def _check_onnx(
    path: str, clip: Tensor, weights: tuple[Tensor, ...], layout: GraphLayout, expected: Tensor
) -> float | None:
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - onnxruntime ships with the cloud extra
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feeds = {CLIP_INPUT: clip.numpy(), **{n: w.numpy() for n, w in zip(layout.input_names[1:], weights, strict=True)}}
    got = session.run([LOGITS_OUTPUT], feeds)[0]
    diff = float(np.abs(got - expected.numpy()).max())
    if not diff <= 1e-3:
        raise RuntimeError(f"the exported graph disagrees with torch on the example inputs (max |diff| {diff:.2e})")
    return diff


__all__ = [
    "FAMILIES",
    "ExportModel",
    "GraphLayout",
    "decode_adapter",
    "example_inputs",
    "export_backbone_onnx",
    "make_layout",
    "onnx_metadata",
    "task_feeds",
]
