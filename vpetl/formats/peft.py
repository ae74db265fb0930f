"""A vpetl LoRA adapter ↔ a Hugging Face ``peft`` LoRA adapter directory on transformers' VideoMAE.

The directory is what ``PeftModel.from_pretrained(VideoMAEForVideoClassification, dir)`` loads and what
``PeftModel.save_pretrained`` writes (PETL_SPEC B.5):

- ``adapter_config.json``: ``peft_type: "LORA"``, ``r``, ``lora_alpha``, ``lora_dropout``, ``target_modules`` as HF
  module names (full paths under the base model, so ``output.dense`` (fc2) never also catches
  ``attention.output.dense`` (proj) by PEFT's suffix rule), ``modules_to_save: ["classifier"]`` for the task head;
- ``adapter_model.safetensors``: ``base_model.model.videomae.encoder.layer.{i}.<module>.lora_{A,B}.weight`` and
  ``base_model.model.classifier.{weight,bias}``, metadata ``{"format": "pt"}``.

Module names come from the VideoMAE table in :mod:`vpetl.formats.keymaps` (the same the checkpoint reader uses).
vpetl's LoRA is PEFT's (``y = W x + (α/r)·B A x``, A (r, in), B (out, r)), so tensors move unchanged.

Import takes any PEFT LoRA on VideoMAE whose modules are LoRA targets vpetl has (q, k, v, proj, fc1, fc2): layers
PEFT left out (``layers_to_transform``) get zero A/B, which adds exactly nothing. What vpetl cannot represent is
refused by name rather than approximated: DoRA, rsLoRA, per-module ranks (``rank_pattern``/``alpha_pattern``), LoRA
or trained biases, other modules to save (e.g. ``fc_norm``), an adapter without the classifier.

Other methods (PATT, BAPAT, AdaptMLP, …) have no PEFT type: they stay in vpetl's own format.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vpetl.artifact import HEAD_BIAS, HEAD_WEIGHT, AdapterFile, read_adapter
from vpetl.backbones.base import Backbone
from vpetl.errors import InvalidAdapter, UnsupportedConversion
from vpetl.formats.keymaps import LORA_TARGET_MODULE, VIDEOMAE_HF_BLOCK, VIDEOMAE_HF_PREFIX, videomae_lora_module

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
SOURCE_NAME = "vpetl_source.json"  # written by export: task, labels, the vpetl adapter's sha256
PREFIX = "base_model.model."
HEAD_MODULE = "classifier"
MAX_CONFIG_BYTES = 1 << 20

# HF module path (under the base model) -> LoRA target, from the shared table.
_MODULE_TO_TARGET = {dict(VIDEOMAE_HF_BLOCK)[module]: target for target, module in LORA_TARGET_MODULE.items()}
_LORA_KEY = re.compile(r"(?:videomae\.)?encoder\.layer\.(\d+)\.(.+)\.lora_([AB])\.weight")


def _refuse_method(method: str) -> UnsupportedConversion:
    return UnsupportedConversion(
        f"a {method!r} adapter has no PEFT counterpart (PEFT's LoRA is the only type that maps onto vpetl's); it "
        "stays in vpetl's own format: serve or ship the .safetensors file as it is"
    )


# ----------------------------------------------------------------------------------------------------- export
def export_peft(source: AdapterFile | bytes | str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Write a vpetl LoRA adapter (on a VideoMAE-style backbone) as a PEFT LoRA directory.

    Args:
        source: the adapter file (bytes, path, or an already read :class:`AdapterFile`).
        out_dir: created if missing; ``adapter_config.json`` and ``adapter_model.safetensors`` are (over)written.

    Returns:
        A summary: paths, rank, alpha, targets, the HF module count, the backbone it needs.

    Raises:
        UnsupportedConversion: not a LoRA adapter, or not on a VideoMAE-style backbone; nothing is written then.
        InvalidAdapter: a malformed file.
    """
    from safetensors.numpy import save_file

    adapter = source if isinstance(source, AdapterFile) else read_adapter(source)
    meta = adapter.meta
    if meta.method != "lora":
        raise _refuse_method(meta.method)
    block_keys = [k for k in adapter.tensors if k.startswith("blocks.")]
    if not all(re.fullmatch(r"blocks\.\d+\.lora\.\w+\.[AB]", k) for k in block_keys):
        raise UnsupportedConversion("the adapter's block tensors are not a LoRA on a plain ViT block layout")
    if not _is_videomae(meta.backbone):
        raise UnsupportedConversion(
            f"the adapter is for backbone {meta.backbone!r}; PEFT export maps onto transformers' VideoMAE only "
            "(videomae-b, videomae-tiny)"
        )
    cfg = meta.method_config
    rank = int(cfg["rank"])
    alpha = float(cfg["alpha"]) if cfg.get("alpha") is not None else float(rank)
    tensors: dict[str, np.ndarray] = {}
    modules: list[str] = []
    for key in sorted(block_keys, key=_block_order):
        _, index, _, target, which = key.split(".")
        module = videomae_lora_module(int(index), target)
        if which == "A":
            modules.append(module)
        tensors[f"{PREFIX}{VIDEOMAE_HF_PREFIX}{module}.lora_{which}.weight"] = adapter.tensors[key]
    tensors[f"{PREFIX}{HEAD_MODULE}.weight"] = adapter.tensors[HEAD_WEIGHT]
    tensors[f"{PREFIX}{HEAD_MODULE}.bias"] = adapter.tensors[HEAD_BIAS]
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "auto_mapping": None,
        "base_model_name_or_path": meta.backbone,
        "revision": None,
        "inference_mode": True,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": float(cfg.get("dropout", 0.0)),
        "target_modules": modules,
        "exclude_modules": None,
        "modules_to_save": [HEAD_MODULE],
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "lora_bias": False,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    # Where it came from, beside PEFT's files (PEFT warns about unknown config keys, and ignores other files);
    # import reads the labels back from it.
    provenance = {
        "task": meta.task,
        "labels": meta.labels,
        "backbone": meta.backbone,
        "backbone_sha256": meta.backbone_sha256,
        "sha256": adapter.sha256,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
        str(out / WEIGHTS_NAME),
        metadata={"format": "pt"},
    )
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (out / SOURCE_NAME).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    return {
        "format": "peft",
        "out": str(out),
        "files": [CONFIG_NAME, WEIGHTS_NAME, SOURCE_NAME],
        "r": rank,
        "lora_alpha": alpha,
        "targets": list(cfg["targets"]),
        "modules": len(modules),
        "backbone": meta.backbone,
        "task": meta.task,
        "num_classes": meta.num_classes,
    }


def _block_order(key: str) -> tuple[int, str]:
    parts = key.split(".")
    return int(parts[1]), ".".join(parts[2:])


def _is_videomae(backbone_name: str) -> bool:
    """The registry's VideoMAE backbones (mean-pooled video ViTs). ``vpetl-demo`` max-pools, which transformers'
    VideoMAE cannot: its adapters would load into PEFT and give other logits, so they are refused."""
    return backbone_name.startswith("videomae")


# ----------------------------------------------------------------------------------------------------- import
def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise InvalidAdapter(f"{directory} has no {CONFIG_NAME}: not a PEFT adapter directory")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise InvalidAdapter(f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidAdapter(f"{path} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise InvalidAdapter(f"{path} does not hold a JSON object")
    return config


def _check_config(config: Mapping[str, Any]) -> tuple[int, float, float]:
    """Refuse what vpetl's LoRA cannot represent; return (r, lora_alpha, lora_dropout)."""
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise UnsupportedConversion(f"peft_type {peft_type!r}: only PEFT LoRA adapters convert to vpetl")
    refusals = {
        "use_dora": "DoRA (use_dora) rescales the merged weight column-wise",
        "use_rslora": "rsLoRA (use_rslora) scales by lora_alpha/√r",
        "rank_pattern": "per-module ranks (rank_pattern)",
        "alpha_pattern": "per-module alphas (alpha_pattern)",
        "lora_bias": "LoRA biases (lora_bias)",
        "fan_in_fan_out": "fan_in_fan_out weights (Conv1D layers)",
    }
    for key, what in refusals.items():
        if config.get(key):
            raise UnsupportedConversion(f"{what} has no vpetl counterpart; train without it")
    if config.get("bias", "none") != "none":
        raise UnsupportedConversion(f"bias={config['bias']!r} trains biases, which vpetl's LoRA does not hold")
    extra = sorted(set(config.get("modules_to_save") or []) - {HEAD_MODULE})
    if extra:
        raise UnsupportedConversion(f"modules_to_save {extra}: only the classifier (the task head) converts")
    r, alpha, dropout = config.get("r"), config.get("lora_alpha"), config.get("lora_dropout", 0.0) or 0.0
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise InvalidAdapter(f"r must be a positive integer, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0:
        raise InvalidAdapter(f"lora_alpha must be a positive number, got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise InvalidAdapter(f"lora_dropout must be in [0, 1), got {dropout!r}")
    return r, float(alpha), float(dropout)


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = directory / WEIGHTS_NAME
    if not path.is_file():
        legacy = " (adapter_model.bin is a pickle: vpetl never unpickles; re-save with safetensors)"
        raise InvalidAdapter(
            f"{directory} has no {WEIGHTS_NAME}" + (legacy if (directory / "adapter_model.bin").exists() else "")
        )
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise InvalidAdapter(f"cannot read {path}: {e}") from e


def _source_labels(directory: Path, num_classes: int) -> list[str] | None:
    """Labels from the ``vpetl_source.json`` a vpetl export wrote, if it is there and fits."""
    path = directory / SOURCE_NAME
    try:
        labels = json.loads(path.read_text())["labels"] if path.stat().st_size < MAX_CONFIG_BYTES else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    ok = isinstance(labels, list) and len(labels) == num_classes and all(isinstance(x, str) for x in labels)
    return labels if ok else None


def peft_to_vpetl(
    directory: str | Path,
    backbone: Backbone,
    *,
    task: str,
    labels: list[str] | None = None,
) -> bytes:
    """Convert a PEFT LoRA directory (trained on transformers' VideoMAE) into vpetl adapter file bytes.

    Args:
        directory: holds ``adapter_config.json`` and ``adapter_model.safetensors``.
        backbone: the vpetl backbone the adapter will be served on (same weights as the HF base model, e.g. built
            from the same checkpoint); its name and sha256 are recorded, shapes are checked against it.
        task: task name recorded in the file.
        labels: class names (default: those of ``vpetl_source.json`` when vpetl wrote the directory, else
            ``LABEL_0`` … as transformers names them).

    Returns:
        The adapter file bytes (``PUT /adapters/{task}`` accepts them).

    Raises:
        UnsupportedConversion: a PEFT feature vpetl cannot represent, modules outside vpetl's LoRA targets, a
            non-VideoMAE backbone, no classifier.
        InvalidAdapter: a malformed directory. IncompatibleAdapter: shapes that do not fit ``backbone``.
    """
    from vpetl.petl import create_model
    from vpetl.petl.io import adapter_bytes
    from vpetl.petl.lora import LORA_TARGETS, LoraConfig
    from vpetl.store.keys import check_task

    check_task(task)  # the same rule as PUT /adapters/{task}: refused here, not after the conversion
    directory = Path(directory)
    if backbone.family != "video_vit":
        raise UnsupportedConversion(f"backbone {backbone.name!r} is not a VideoMAE: PEFT import maps onto videomae-*")
    rank, alpha, dropout = _check_config(_read_config(directory))
    sd = _read_weights(directory)
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    head: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        rest = key[len(PREFIX) :] if key.startswith(PREFIX) else key
        if rest in (
            f"{HEAD_MODULE}.weight",
            f"{HEAD_MODULE}.bias",
            f"{HEAD_MODULE}.modules_to_save.weight",
            f"{HEAD_MODULE}.modules_to_save.bias",
        ):
            head[rest.rsplit(".", 1)[1]] = value
            continue
        m = _LORA_KEY.fullmatch(rest)
        target = _MODULE_TO_TARGET.get(m.group(2)) if m else None
        if m is None or target is None:
            raise UnsupportedConversion(
                f"tensor {key!r} is not a LoRA on one of vpetl's targets ({', '.join(_MODULE_TO_TARGET)})"
            )
        pairs.setdefault((int(m.group(1)), target), {})[m.group(3)] = value
    if set(head) != {"weight", "bias"}:
        raise UnsupportedConversion(
            "the PEFT adapter has no classifier weights: train with modules_to_save=['classifier'] so the task head "
            "travels with it (the base model's own classifier is not part of the adapter)"
        )
    if not pairs:
        raise InvalidAdapter(f"{directory / WEIGHTS_NAME} holds no LoRA tensors")
    for (index, target), ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise InvalidAdapter(f"layer {index} {target}: lora_A and lora_B must both be present")
    depth = len(backbone.adaptable_blocks())
    if max(i for i, _ in pairs) >= depth:
        raise UnsupportedConversion(f"the adapter has layer {max(i for i, _ in pairs)}; backbone has {depth} blocks")
    targets = tuple(t for t in LORA_TARGETS if any(t == tt for _, tt in pairs))
    config = LoraConfig(rank=rank, alpha=alpha, targets=targets, dropout=dropout)
    num_classes = int(head["weight"].shape[0])
    model = create_model(backbone, config, num_classes, share_backbone=True)
    try:
        state: dict[str, torch.Tensor] = {}
        for name, p in model.trainable_state_dict().items():
            if name.startswith("blocks."):
                _, index, _, target, which = name.split(".")
                ab = pairs.get((int(index), target))
                # A layer PEFT left out (layers_to_transform): zero A and B add exactly nothing.
                state[name] = ab[which] if ab is not None else torch.zeros_like(p)
        state[HEAD_WEIGHT], state[HEAD_BIAS] = head["weight"], head["bias"]
        model.load_trainable_state_dict(state)  # strict: every shape checked against this backbone
        names = labels or _source_labels(directory, num_classes) or [f"LABEL_{i}" for i in range(num_classes)]
        return adapter_bytes(model, task=task, labels=names, extra={"imported_from": "peft"})
    finally:
        model.remove_adapters()
