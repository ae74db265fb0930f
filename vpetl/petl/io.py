"""Adapter files for torch models: save a :class:`PetlModel`'s state, load it back onto a backbone.

The file format and every validation live in :mod:`vpetl.artifact` (torch-free, shared with the edge); this module
only converts between a model and ``(tensors, AdapterMeta)``, and rebuilds models from the config in the file.

Backbone identity: an adapter records ``backbone.sha256()`` of the backbone it was trained on, and loading refuses a
backbone with another hash. Methods that train backbone weights in place (BitFit, full tuning) change those weights,
so the hash must be taken *before* training — :func:`save_adapter` uses the backbone's cached hash when there is
one (``create_model`` copies the cache of a Backbone passed in; call ``model.backbone.sha256()`` right after
``create_model`` otherwise). Full fine-tuning stores every backbone weight anyway, so its hash is not checked.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from vpetl.artifact import (
    AdapterFile,
    AdapterMeta,
    adapter_sha256,
    check_compatible,
    read_adapter,
    write_adapter,
)
from vpetl.backbones.base import Backbone
from vpetl.backbones.registry import create_backbone
from vpetl.errors import IncompatibleAdapter, InvalidAdapter, VpetlError
from vpetl.petl.base import MethodConfig
from vpetl.petl.model import PetlModel, create_model
from vpetl.petl.registry import get_method, method_config_from_dict

logger = logging.getLogger(__name__)

AdapterSource = AdapterFile | bytes | str | Path
# Local files from our own trainer may hold a whole fine-tuned model (method "full"); the 256 MiB default of
# read_adapter is for uploads.
LOCAL_MAX_BYTES = 8 * 1024**3


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).contiguous().numpy()


def adapter_meta(
    model: PetlModel,
    *,
    task: str,
    labels: list[str],
    metrics: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
    created_at: str | None = None,
) -> AdapterMeta:
    """The AdapterMeta describing ``model`` (method config, backbone name + hash, input spec, counts);
    ``created_at`` defaults to now (pass a fixed one for byte-reproducible files)."""
    if len(labels) != model.num_classes:
        raise InvalidAdapter(f"{len(labels)} labels given for a model with {model.num_classes} classes")
    if model.method.trainable_backbone_parameters(model.backbone) and getattr(model.backbone, "_sha256", None) is None:
        logger.warning(
            "%s trains backbone weights in place and backbone %s has no hash cached from before training: the "
            "recorded backbone_sha256 is that of the trained weights, so the file will not load onto the original "
            "backbone (call model.backbone.sha256() right after create_model)",
            model.config.method,
            model.backbone.name,
        )
    extra = dict(extra or {})
    if not model.method.servable:
        # A whole model, not an adapter: it can be saved and evaluated, never served (PETL_SPEC A.11).
        extra["servable"] = False
    return AdapterMeta(
        method=model.config.method,
        method_config=model.config.to_dict(),
        backbone=model.backbone.name,
        backbone_sha256=model.backbone.sha256(),
        task=task,
        num_classes=model.num_classes,
        labels=list(labels),
        metrics=dict(metrics or {}),
        input_spec=model.backbone.input_spec,
        trainable_params=int(model.parameter_counts()["trainable"]),
        extra=extra,
        **({"created_at": created_at} if created_at is not None else {}),
    )


def adapter_bytes(
    model: PetlModel,
    *,
    task: str,
    labels: list[str],
    metrics: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
    dtype: Literal["float32", "float16"] = "float32",
    path: str | Path | None = None,
    created_at: str | None = None,
) -> bytes:
    """The adapter file for ``model`` as bytes (also written atomically to ``path`` when given).

    Args:
        model: the trained model; its ``trainable_state_dict()`` (head included) is stored.
        task: task name recorded in the file.
        labels: class names in index order, one per class.
        metrics: e.g. ``{"val_top1": 0.81}`` (finite floats).
        extra: free-form JSON-ready fields; ``{"servable": false}`` is added for full fine-tuning.
        dtype: on-disk float type.
        path: optional file to write.
        created_at: ISO-8601 UTC timestamp recorded in the file (default now); fix it for reproducible bytes.
    """
    meta = adapter_meta(model, task=task, labels=labels, metrics=metrics, extra=extra, created_at=created_at)
    tensors = {name: _to_numpy(t) for name, t in model.trainable_state_dict().items()}
    return write_adapter(tensors, meta, path, dtype=dtype)


def save_adapter(
    model: PetlModel,
    path: str | Path,
    *,
    task: str,
    labels: list[str],
    metrics: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
    dtype: Literal["float32", "float16"] = "float32",
    created_at: str | None = None,
) -> str:
    """Write ``model``'s adapter file to ``path`` (atomically) and return its sha256 — the adapter's identity."""
    data = adapter_bytes(
        model, task=task, labels=labels, metrics=metrics, extra=extra, dtype=dtype, path=path, created_at=created_at
    )
    logger.info(
        "saved adapter task=%s method=%s sha256=%s to %s", task, model.config.method, adapter_sha256(data)[:12], path
    )
    return adapter_sha256(data)


def _as_file(source: AdapterSource, max_bytes: int) -> AdapterFile:
    return source if isinstance(source, AdapterFile) else read_adapter(source, max_bytes=max_bytes)


def _config_from(adapter: AdapterFile) -> MethodConfig:
    """The method config stored in the file, strictly (an unknown method or key is an IncompatibleAdapter)."""
    meta = adapter.meta
    try:
        config = method_config_from_dict({"method": meta.method, **meta.method_config}, error=IncompatibleAdapter)
    except VpetlError as e:
        raise IncompatibleAdapter(f"adapter {adapter.sha256[:12]} (method {meta.method!r}): {e.message}") from e
    if config.method != meta.method:
        raise IncompatibleAdapter(
            f"adapter {adapter.sha256[:12]}: method {meta.method!r} but its config is for {config.method!r}"
        )
    return config


def _checks_backbone(adapter: AdapterFile, check_backbone: bool) -> bool:
    # Full fine-tuning stores (and overwrites) every backbone weight: the architecture check (shapes) is what matters.
    return check_backbone and adapter.meta.extra.get("servable", True) is not False and adapter.meta.method != "full"


def apply_adapter(
    model: PetlModel, adapter: AdapterSource, *, check_backbone: bool = True, max_bytes: int = LOCAL_MAX_BYTES
) -> AdapterFile:
    """Load an adapter's tensors into an existing model built for the same method and settings.

    Args:
        model: the target; its method config must equal the file's (same shapes are not enough: a different
            scale or rank would silently give other outputs).
        adapter: an AdapterFile, the file bytes, or a path.
        check_backbone: refuse a file trained on a backbone with another sha256.
        max_bytes: size limit when reading bytes or a path.

    Returns:
        The AdapterFile (meta: labels, metrics; sha256: identity).

    Raises:
        InvalidAdapter: the file is malformed (see ``vpetl.artifact.read_adapter``).
        IncompatibleAdapter: another method or config, another backbone, or tensors that do not fit.
    """
    file = _as_file(adapter, max_bytes)
    if file.meta.method != model.config.method:
        raise IncompatibleAdapter(
            f"adapter {file.sha256[:12]} is a {file.meta.method!r} adapter; the model uses {model.config.method!r}"
        )
    config = _config_from(file)
    if config != model.config:
        mine, theirs = model.config.to_dict(), config.to_dict()
        diff = ", ".join(
            f"{k}: file {theirs.get(k)!r} vs model {mine.get(k)!r}" for k in sorted(mine) if mine[k] != theirs.get(k)
        )
        raise IncompatibleAdapter(
            f"adapter {file.sha256[:12]}: {file.meta.method} settings differ from the model's ({diff})"
        )
    if file.meta.num_classes != model.num_classes:
        raise IncompatibleAdapter(
            f"adapter {file.sha256[:12]} has {file.meta.num_classes} classes; the model has {model.num_classes}"
        )
    backbone = model.backbone
    check_compatible(
        file,
        expected_shapes=model.expected_shapes(),
        backbone_sha256=backbone.sha256() if _checks_backbone(file, check_backbone) else None,
        backbone_name=backbone.name,
    )
    if file.meta.input_spec != backbone.input_spec:
        logger.warning(
            "adapter %s was trained with input spec %s; backbone %s uses %s",
            file.sha256[:12],
            file.meta.input_spec,
            backbone.name,
            backbone.input_spec,
        )
    model.load_trainable_state_dict({name: torch.from_numpy(arr) for name, arr in file.tensors.items()}, strict=True)
    logger.info("applied adapter task=%s method=%s sha256=%s", file.meta.task, file.meta.method, file.sha256[:12])
    return file


def load_adapter(
    source: AdapterSource,
    model_or_backbone: PetlModel | Backbone | str | None = None,
    *,
    check_backbone: bool = True,
    share_backbone: bool = False,
    max_bytes: int = LOCAL_MAX_BYTES,
) -> PetlModel:
    """A model with the adapter loaded, built from the method config and num_classes stored in the file.

    Args:
        source: an AdapterFile, the file bytes, or a path.
        model_or_backbone: a Backbone (a private copy is adapted unless ``share_backbone``), a backbone name
            (built seeded, like ``create_backbone``), an existing PetlModel (same as :func:`apply_adapter`), or
            None for the backbone named in the file (only reproducible for seeded backbones such as ``*-tiny``;
            pass a checkpoint-loaded Backbone otherwise).
        check_backbone: refuse a backbone whose sha256 differs from the file's.
        share_backbone: attach to the given Backbone itself instead of a copy (see ``create_model``).
        max_bytes: size limit when reading bytes or a path.

    Returns:
        The model in eval mode.

    Raises:
        InvalidAdapter, IncompatibleAdapter: as :func:`apply_adapter`; UnknownBackbone for an unknown name.
    """
    file = _as_file(source, max_bytes)
    if isinstance(model_or_backbone, PetlModel):
        apply_adapter(model_or_backbone, file, check_backbone=check_backbone)
        return model_or_backbone
    own = not isinstance(model_or_backbone, Backbone)
    if model_or_backbone is None:
        backbone = create_backbone(file.meta.backbone)
    elif isinstance(model_or_backbone, str):
        backbone = create_backbone(model_or_backbone)
    elif isinstance(model_or_backbone, Backbone):
        backbone = model_or_backbone
    else:
        raise TypeError(
            f"model_or_backbone must be a PetlModel, Backbone, name or None, got {type(model_or_backbone)}"
        )
    if _checks_backbone(file, check_backbone):
        # Before building anything: a backbone mismatch explains itself better than the shape errors it causes.
        try:
            check_compatible(file, backbone_sha256=backbone.sha256(), backbone_name=backbone.name)
        except IncompatibleAdapter as e:
            if model_or_backbone is None:
                raise IncompatibleAdapter(
                    f"{e.message} (the backbone was built from its name without a checkpoint: pass the Backbone "
                    "the adapter was trained on as model_or_backbone)"
                ) from e
            raise
    config = _config_from(file)
    # A backbone built here is private: share it unless the method trains its weights in place (create_model
    # refuses sharing then), which saves a deep copy.
    in_place = bool(get_method(config.method)(config).trainable_backbone_parameters(backbone))
    share = (own or share_backbone) and not in_place
    model = create_model(backbone, config, file.meta.num_classes, share_backbone=share)
    model.eval()
    apply_adapter(model, file, check_backbone=check_backbone)
    return model


__all__ = ["adapter_bytes", "adapter_meta", "apply_adapter", "load_adapter", "save_adapter"]
