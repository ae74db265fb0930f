"""A VideoMAE backbone ↔ a Hugging Face ``transformers`` model directory (``config.json`` + ``model.safetensors``).

Export writes what ``VideoMAEForVideoClassification.from_pretrained(dir)`` (and ``VideoMAEModel.from_pretrained``)
loads: the encoder under ``videomae.``, ``fc_norm`` at the top level, and — when a task head is given — the
``classifier``. Names come from the one VideoMAE table in :mod:`vpetl.formats.keymaps`, the same the checkpoint
reader uses (``vpetl serve --checkpoint DIR/model.safetensors`` reads such a directory back).

What does not carry over, said rather than hidden:

- ``pool="max"`` and a convolutional stem (the ``vpetl-demo`` backbone has both) have no HF counterpart: refused.
- HF builds its ``fc_norm`` with LayerNorm's default eps 1e-5 whatever the config says; vpetl's VideoMAE uses 1e-6
  (the original code). The encoder's own norms follow ``layer_norm_eps`` and match exactly; the pooled feature
  after ``fc_norm`` differs by the eps alone (measured in tests/vpetl/formats/test_hf.py, far below 1e-4 logits).

Writing needs ``safetensors`` only (no ``transformers``): the config is plain JSON with the fields VideoMAEConfig
reads.

:func:`export_hf_task` writes one task as a plain transformers classifier: a LoRA or BitFit adapter merged into the
weights (:mod:`vpetl.petl.merge`) and its head as ``classifier``; other methods cannot merge and are refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vpetl.backbones.base import Backbone
from vpetl.errors import UnsupportedConversion, UnsupportedMethod
from vpetl.formats.keymaps import VIDEOMAE_HF_HEAD_LEVEL, VIDEOMAE_HF_PREFIX, videomae_vpetl_to_hf

Tensor = torch.Tensor
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def check_exportable(backbone: Backbone) -> None:
    """Raise UnsupportedConversion unless ``backbone`` is a mean-pooled VideoMAE-style video ViT (linear patchify)."""
    if backbone.family != "video_vit":
        raise UnsupportedConversion(
            f"backbone {backbone.name!r} ({backbone.family}) has no Hugging Face export: only VideoMAE-style video "
            "ViTs (videomae-b, videomae-tiny) map onto transformers' VideoMAE"
        )
    if getattr(backbone.config, "pool", "mean") != "mean":
        raise UnsupportedConversion(
            f"backbone {backbone.name!r} pools with {backbone.config.pool!r}; transformers' VideoMAE only mean-pools"
        )
    if getattr(backbone.config, "stem_widths", ()):
        raise UnsupportedConversion(
            f"backbone {backbone.name!r} has a convolutional stem; transformers' VideoMAE patchifies with one Conv3d"
        )


def hf_config(backbone: Backbone, labels: list[str] | None = None) -> dict[str, Any]:
    """The ``config.json`` of ``backbone`` as a transformers VideoMAE (with ``id2label`` when ``labels`` given)."""
    check_exportable(backbone)
    c = backbone.config
    spec = backbone.input_spec
    block = backbone.adaptable_blocks()[0]
    cfg: dict[str, Any] = {
        "model_type": "videomae",
        "architectures": ["VideoMAEForVideoClassification"],
        "image_size": spec.size,
        "patch_size": c.patch_size,
        "num_channels": c.in_chans,
        "num_frames": spec.num_frames,
        "tubelet_size": c.tubelet_size,
        "hidden_size": c.embed_dim,
        "num_hidden_layers": c.depth,
        "num_attention_heads": c.num_heads,
        "intermediate_size": int(block.mlp.fc1.out_features),  # type: ignore[attr-defined]
        "hidden_act": "gelu",  # exact (erf) GELU, as torch.nn.GELU()
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "layer_norm_eps": c.norm_eps,
        "qv_bias": True,
        "use_mean_pooling": True,
        "torch_dtype": "float32",
        # Where it came from, for people who browse the file (transformers ignores unknown keys).
        "vpetl_backbone": backbone.name,
        "vpetl_backbone_sha256": backbone.sha256(),
    }
    if labels:
        cfg["id2label"] = {str(i): name for i, name in enumerate(labels)}
        cfg["label2id"] = {name: i for i, name in enumerate(labels)}
    return cfg


def to_hf_state_dict(backbone: Backbone) -> dict[str, Tensor]:
    """vpetl ``VideoViT`` frozen weights -> ``VideoMAEForVideoClassification`` names (encoder under ``videomae.``)."""
    check_exportable(backbone)
    out: dict[str, Tensor] = {}
    for key, value in backbone.frozen_state_dict().items():
        name = videomae_vpetl_to_hf(key)
        if name is None:
            raise UnsupportedConversion(f"backbone parameter {key!r} has no name in transformers' VideoMAE")
        full = name if name in VIDEOMAE_HF_HEAD_LEVEL else VIDEOMAE_HF_PREFIX + name
        out[full] = value.detach().to("cpu", torch.float32).contiguous()
    return out


def export_hf(
    backbone: Backbone,
    out_dir: str | Path,
    *,
    head: tuple[Tensor, Tensor] | None = None,
    labels: list[str] | None = None,
) -> dict[str, Any]:
    """Write ``backbone`` (and optionally a task head) as a transformers VideoMAE directory.

    Args:
        backbone: a mean-pooled video ViT (``videomae-*``).
        out_dir: created if missing; ``config.json`` and ``model.safetensors`` are (over)written.
        head: (weight (K, C), bias (K,)) of a task head, written as ``classifier``; without it the directory holds
            the backbone only and transformers initialises a classifier on load (it says so).
        labels: class names for ``id2label`` (length K when a head is given).

    Returns:
        A summary: paths, tensor count, parameters, backbone name and sha256.
    """
    from safetensors.torch import save_file

    cfg = hf_config(backbone, labels)
    tensors = to_hf_state_dict(backbone)
    if head is not None:
        weight, bias = head
        if labels is not None and len(labels) != weight.shape[0]:
            raise UnsupportedConversion(f"{len(labels)} labels for a head of {weight.shape[0]} classes")
        tensors["classifier.weight"] = weight.detach().to("cpu", torch.float32).contiguous()
        tensors["classifier.bias"] = bias.detach().to("cpu", torch.float32).contiguous()
        if not labels:
            cfg["id2label"] = {str(i): f"LABEL_{i}" for i in range(weight.shape[0])}
            cfg["label2id"] = {f"LABEL_{i}": i for i in range(weight.shape[0])}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    (out / CONFIG_NAME).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return {
        "format": "hf",
        "out": str(out),
        "files": [CONFIG_NAME, WEIGHTS_NAME],
        "tensors": len(tensors),
        "parameters": sum(t.numel() for t in tensors.values()),
        "backbone": backbone.name,
        "backbone_sha256": backbone.sha256(),
        "classifier": head is not None,
    }


def export_hf_task(backbone: Backbone, adapter: bytes | str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Write one task as ``VideoMAEForVideoClassification``: ``adapter`` merged into ``backbone``, its head as the
    classifier, its labels as ``id2label``.

    Args:
        backbone: the frozen backbone the adapter was trained on (its sha256 is checked against the file's).
        adapter: a vpetl adapter file (bytes or path) of a method that merges (LoRA, BitFit, linear).
        out_dir: as :func:`export_hf`.

    Raises:
        UnsupportedConversion: a method that cannot merge (PATT, BAPAT, …), or a backbone without an HF export.
        InvalidAdapter / IncompatibleAdapter: a malformed file, or one for another backbone.
    """
    from vpetl.artifact import read_adapter
    from vpetl.errors import IncompatibleAdapter
    from vpetl.petl.merge import merged_copy
    from vpetl.petl.registry import method_config_from_dict

    check_exportable(backbone)
    file = read_adapter(adapter, backbone_sha256=backbone.sha256(), backbone_name=backbone.name)
    config = method_config_from_dict(file.meta.method_config, error=IncompatibleAdapter)
    state = {k: torch.from_numpy(v.copy()) for k, v in file.tensors.items()}
    try:
        merged = merged_copy(backbone, config, state)
    except UnsupportedMethod as e:
        raise UnsupportedConversion(
            f"{e.message}; a {config.method!r} task has no plain transformers form (a LoRA one also exports as PEFT: "
            "`vpetl export peft`)"
        ) from e
    info = export_hf(merged, out_dir, head=(state["head.weight"], state["head.bias"]), labels=list(file.meta.labels))
    info.update(
        {
            "task": file.meta.task,
            "method": config.method,
            "adapter_sha256": file.sha256,
            "frozen_backbone_sha256": backbone.sha256(),
        }
    )
    return info
