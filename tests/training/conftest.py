"""Fixtures of the training tests: one tiny synthetic dataset per session (real mp4 files, a few seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    # Tiny models gain nothing from a second intra-op thread, and on a busy 2-core machine (tests run in parallel
    # with other suites) a barrier waiting for a descheduled thread makes each op ~100x slower.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``appearance`` preset, 8 classes × 4 clips (3 train, 1 val) of 40² pixels, 8–12 frames: enough for
    ``videomae-tiny`` (4 frames of 32²) to learn something in a few seconds."""
    from vpetl.data.synth import synthesize

    return synthesize("appearance", tmp_path_factory.mktemp("tiny-appearance"), clips_per_class=4, seed=0, size=40,
                      val_fraction=0.25, frames=(8, 12))
