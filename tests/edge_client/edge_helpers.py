"""Helpers shared by the edge tests and their conftest (a uniquely named module: ``conftest`` is not importable
by name when several test folders have one)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
TINY = "videomae-tiny"
LABELS = ["run", "jump", "wave", "sit"]


def make_adapter(method: str, options: dict, *, task: str = "t", seed: int = 1, backbone: str = TINY,
                 labels: list[str] | None = None) -> tuple[object, bytes]:
    """(PetlModel, artifact bytes) with every trainable tensor random (zero-init ups would hide bugs)."""
    import torch

    from vpetl.petl import create_model
    from vpetl.petl.io import adapter_bytes
    from vpetl.petl.registry import make_config

    labels = labels or LABELS
    model = create_model(backbone, make_config(method, **options), len(labels), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_state_dict().values():
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    model.eval()
    data = adapter_bytes(model, task=task, labels=labels, created_at="2025-01-01T00:00:00Z")
    return model, data
