"""Helpers shared by the commands that load a backbone (serve, worker, up, train)."""

from __future__ import annotations

from pathlib import Path


def resolve_checkpoint(
    backbone: str, checkpoint: Path | None, data_dir: Path, *, progress: bool = True
) -> Path | None:
    """The checkpoint to load: the one given, else — for ``vpetl-demo`` — the cached pretrained demo backbone
    (pretrained on first use, a few minutes on 2 cores), else None (a seeded random init)."""
    if checkpoint is not None or backbone != "vpetl-demo":
        return checkpoint
    from training.pretrain import ensure_demo_backbone

    return ensure_demo_backbone(data_dir / "backbones", progress=progress)
