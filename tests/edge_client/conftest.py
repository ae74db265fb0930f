"""Fixtures for the edge tests: tiny exported graphs (once per session), adapters with real values, a real mp4, and
the in-process contract server (``fake_server.py``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fake_server.py / edge_helpers.py (also benchmarks)

from edge_helpers import TINY  # noqa: E402
from fake_server import FakeServer  # noqa: E402


@pytest.fixture(scope="session")
def tiny_graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """videomae-tiny exported as the bapat and the lora graph (≈3 s each)."""
    import torch

    from vpetl.backbones import create_backbone
    from vpetl.formats.onnx import export_backbone_onnx

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
