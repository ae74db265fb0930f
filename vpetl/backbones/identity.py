"""One backbone for the whole deployment: build the backbone a process should serve or train on, from the identity
registered in Redis (:mod:`vpetl.store.backbones`), and refuse to start against another one.

Resolution, the same in ``vpetl serve`` (both engines), every Ray Serve predictor replica, ``vpetl worker`` and
``vpetl up``:

1. A backbone is registered: its name must be the one asked for. With a local checkpoint, the checkpoint must give
   the registered sha256; without one, the weights come from Redis (cached under ``cache_dir`` by sha256) or, for
   a seeded registration, from the seeded init. The built backbone's sha256 is checked either way.
2. Nothing is registered: a process that has the weights (a checkpoint, or a backbone whose seeded init is a
   legitimate choice) registers them; one that has not (``vpetl-demo`` without its pretrained file, e.g. a replica
   started by ``serve deploy``) waits up to ``wait_s`` for another process to register, then refuses with the
   command to run.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vpetl.backbones.base import Backbone
from vpetl.backbones.registry import create_backbone
from vpetl.protocol import BackboneInfo, InputSpec
from vpetl.store.backbones import (
    BackboneMismatch,
    BackboneNotRegistered,
    BackboneRecord,
    BackboneRegistry,
    describe,
)

logger = logging.getLogger(__name__)

# Backbones whose seeded init is never what a user means to serve: their weights come from a pretraining run.
NEEDS_WEIGHTS = frozenset({"vpetl-demo"})


def backbone_info(backbone: Backbone) -> BackboneInfo:
    return BackboneInfo(
        name=backbone.name,
        family=backbone.family,
        sha256=backbone.sha256(),
        input_spec=backbone.input_spec,
        num_features=backbone.num_features,
        parameters=sum(p.numel() for p in backbone.frozen_state_dict().values()),
    )


def weights_bytes(backbone: Backbone) -> bytes:
    """The frozen weights as a safetensors file in vpetl's own layout (what ``vpetl pretrain`` writes)."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in backbone.frozen_state_dict().items()})


def _check(backbone: Backbone, record: BackboneRecord, how: str) -> Backbone:
    if backbone.sha256() != record.sha256:
        raise BackboneMismatch(
            f"{how} gives backbone sha256 {backbone.sha256()[:12]}…, but this deployment serves {describe(record)}. "
            "Start every server, replica and worker with the registered backbone (drop --checkpoint to load it "
            "from Redis), or reset the deployment's backbone with `vpetl backbone unregister` (adapters trained "
            "on the old one will be refused)."
        )
    return backbone


def resolve_backbone(
    name: str,
    checkpoint: str | Path | None,
    registry: BackboneRegistry,
    cache_dir: str | Path,
    *,
    wait_s: float = 0.0,
    register: bool = True,
    input_spec: InputSpec | None = None,
) -> tuple[Backbone, BackboneRecord]:
    """The deployment's backbone (frozen, eval, on CPU) and its registered record. See the module docstring.

    ``input_spec`` (registration only) serves the backbone at another clip size than its default, e.g. 4×112²;
    processes that load a registered backbone build it with the registered spec.

    Raises:
        BackboneMismatch: another backbone is registered (name or weights differ).
        BackboneNotRegistered: nothing is registered and this process has no weights to register.
    """
    can_register = register and (checkpoint is not None or name not in NEEDS_WEIGHTS)
    record = registry.get() if can_register else registry.wait(wait_s)
    if record is None and not can_register:
        raise BackboneNotRegistered(
            f"no backbone is registered in Redis and this process has no weights for {name!r}: run "
            f"`vpetl backbone register --backbone {name} --checkpoint FILE` (or start `vpetl serve` / `vpetl worker` "
            "with --checkpoint, which registers it) against the same Redis"
        )
    if record is not None:
        if input_spec is not None and input_spec != record.input_spec:
            raise BackboneMismatch(
                f"this process asks for input {input_spec.num_frames}×{input_spec.size}², but this deployment "
                f"serves {describe(record)} at {record.input_spec.num_frames}×{record.input_spec.size}²"
            )
        if record.name != name:
            raise BackboneMismatch(
                f"this process was started with backbone {name!r}, but this deployment serves {describe(record)}: "
                f"use --backbone {record.name} (or VPETL_BACKBONE), or `vpetl backbone unregister` to reset"
            )
        spec = record.input_spec
        if checkpoint is not None:
            built = create_backbone(name, checkpoint=checkpoint, input_spec=spec)
            return _check(built, record, f"checkpoint {checkpoint}"), record
        if record.weights == "blob":
            path = registry.fetch_to(record, Path(cache_dir))
            built = create_backbone(name, checkpoint=path, input_spec=spec)
            return _check(built, record, "the weights in Redis"), record
        return _check(create_backbone(name, input_spec=spec), record, f"the seeded init of {name}"), record

    backbone = create_backbone(name, checkpoint=checkpoint, input_spec=input_spec)
    weights = weights_bytes(backbone) if checkpoint is not None else None
    source = Path(checkpoint).name if checkpoint is not None else "seeded init"
    record, registered = registry.register(backbone_info(backbone), weights=weights, source=source)
    if registered:
        logger.info("registered backbone %s in Redis", describe(record))
    return _check(backbone, record, f"checkpoint {checkpoint}" if checkpoint else f"the seeded init of {name}"), record

