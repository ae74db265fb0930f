"""Fixtures for the edge tests: tiny exported graphs (once per session), adapters with real values, a real mp4, and
the in-process contract server (``fake_server.py``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # fake_server.py is shared with benchmarks/edge.py, which imports it the same way

from fake_server import FakeServer  # noqa: E402

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


@pytest.fixture(scope="session")
def tiny_graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """videomae-tiny exported as the bapat and the lora graph (≈3 s each)."""
    import torch

    from training.onnx_export import export_backbone_onnx
    from vpetl.backbones import create_backbone

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("graphs")
    graphs = {}
    for family in ("bapat", "lora"):
        export_backbone_onnx(create_backbone(TINY), family, out / f"{family}.onnx")
        graphs[family] = out / f"{family}.onnx"
    return graphs


@pytest.fixture(scope="session")
def mp4_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real mp4 (PyAV), 20 frames of 64×48 rendered by the synthetic generator (non-square: the resize and the
    centre crop both matter)."""
    from vpetl.data.synth import render_clip, write_mp4

    frames = render_clip("appearance", 2, 0, seed=3, size=64, frames=(20, 20))[:, 8:56]  # (T, 48, 64, 3)
    path = tmp_path_factory.mktemp("clips") / "clip.mp4"
    write_mp4(path, frames)
    return path


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server
