"""Fixtures for the dataset tests: a tiny synthetic dataset written once per session (real mp4 files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vpetl.data.synth import synthesize


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``temporal`` preset, 3 clips per class (2 train + 1 val), 64², 8–12 frames: 30 clips in well under 1 s."""
    return synthesize("temporal", tmp_path_factory.mktemp("synth") / "temporal", clips_per_class=3, seed=7, size=64,
                      frames=(8, 12), workers=1)
