"""A single-task edge graph: one adapter merged into constants, so a call feeds only the clip (zero adapter cost).

Two ways in, by method:

- **LoRA, BitFit, linear**: the adapter is linear in the frozen weights, so :func:`vpetl.petl.merge.merged_copy`
  folds it into them (``W + (α/r)·B·A``; BitFit's biases replace the frozen ones) and the merged backbone is exported
  as the ``linear`` graph: no adapter terms at all, not even zeros (``merge = "weights"``).
- **BAPAT, PATT, AdaptMLP** (a tanh / ReLU sits between their weights and the frozen ones): the family graph is
  exported as usual and every adapter input becomes an initializer holding the task's folded tensor
  (``merge = "initializers"``), so onnxruntime sees constants it can pre-pack, and the call feeds only the clip.

Either way the head becomes initializers too, the graph's only input is ``clip`` and the metadata says which task
and adapter (sha256) it holds; ``backbone_sha256`` stays the frozen backbone's (the one adapters name). Other
methods (prefix, VPT, ST-Adapter, DualPath, full) have no edge graph and are refused.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vpetl.artifact import AdapterFile, read_adapter
from vpetl.backbones.base import Backbone
from vpetl.errors import IncompatibleAdapter
from vpetl.formats.onnx import CLIP_INPUT, decode_adapter, export_backbone_onnx, make_layout, task_feeds
from vpetl.petl.merge import MERGEABLE, merged_copy
from vpetl.petl.registry import method_config_from_dict

logger = logging.getLogger(__name__)

#: methods folded as initializers into their family's graph (the family is named like the method)
FOLDED = ("bapat", "patt", "adaptmlp")


def fold_inputs(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    values: Mapping[str, np.ndarray],
    metadata: Mapping[str, str],
) -> None:
    """Copy the graph at ``src`` to ``dst`` with the named inputs turned into initializers and metadata updated."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(src))
    names = {i.name for i in proto.graph.input}
    if missing := set(values) - names:
        raise IncompatibleAdapter(f"the graph has no inputs {sorted(missing)}")
    kept = [i for i in proto.graph.input if i.name not in values]
    del proto.graph.input[:]
    proto.graph.input.extend(kept)
    for name, value in values.items():
        proto.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))
    have = {p.key: p for p in proto.metadata_props}
    for key, value in metadata.items():
        entry = have.get(key) or proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(proto, str(dst))


def export_merged_onnx(
    backbone: Backbone, adapter: AdapterFile | bytes | str | Path, path: str | Path
) -> dict[str, Any]:
    """Write the single-task graph of ``adapter`` on ``backbone`` to ``path`` (atomically).

    Returns the metadata written plus ``size``, ``path`` and ``merge`` (``weights`` or ``initializers``).

    Raises:
        IncompatibleAdapter: another backbone, a damaged adapter, or a method with no edge graph.
    """
    file = adapter if isinstance(adapter, AdapterFile) else read_adapter(adapter)
    method = file.meta.method
    task = decode_adapter(backbone, file)  # validates shapes and the backbone sha256 first
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".merge-") as tmp:
        graph = Path(tmp) / "graph.onnx"
        if method in MERGEABLE:
            config = method_config_from_dict(file.meta.method_config, error=IncompatibleAdapter)
            state = {k: torch.from_numpy(v) for k, v in file.tensors.items()}
            merged = merged_copy(backbone, config, state)
            export_backbone_onnx(merged, "linear", graph, check=False)
            layout, how = make_layout(merged, "linear"), "weights"
        elif method in FOLDED:
            export_backbone_onnx(backbone, method, graph, check=False)
            layout, how = make_layout(backbone, method), "initializers"
        else:
            raise IncompatibleAdapter(
                f"method {method!r} has no edge graph to merge into (merge: {', '.join(MERGEABLE)}; fold: "
                f"{', '.join(FOLDED)})"
            )
        # the merged backbone's graph takes only the head; a folded one takes every adapter input
        feeds = (
            {"head.weight": task.head_weight, "head.bias": task.head_bias}
            if how == "weights"
            else task_feeds(layout, task)
        )
        values = {name: t.detach().float().numpy() for name, t in feeds.items()}
        metadata = {
            "backbone_sha256": backbone.sha256(),  # the frozen backbone (merged_copy rehashed its own copy)
            "input_names": json.dumps([CLIP_INPUT]),
            "merged_task": file.meta.task,
            "merged_adapter_sha256": file.sha256,
            "merged_method": method,
            "merge": how,
            "labels": json.dumps(file.meta.labels),
        }
        out = Path(tmp) / "merged.onnx"
        fold_inputs(graph, out, values, metadata)
        os.chmod(out, 0o644)
        os.replace(out, path)
    logger.info("merged %s (%s, %s) into %s: %d bytes", file.meta.task, method, how, path, path.stat().st_size)
    return {**metadata, "merge": how, "size": path.stat().st_size, "path": str(path)}


__all__ = ["FOLDED", "export_merged_onnx", "fold_inputs"]
