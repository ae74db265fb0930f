"""Large frames are decoded already scaled to the model's short side; the limits apply each on their own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vpetl import video as V
from vpetl.data.synth import render_clip, write_mp4
from vpetl.errors import InvalidVideo
from vpetl.protocol import InputSpec

SPEC = InputSpec(num_frames=4, sampling_rate=2, size=32)  # resize_short 37


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    square = render_clip("appearance", 2, 0, seed=0, size=240, frames=(12, 12))  # (T, 240, 240, 3)
    path = tmp_path_factory.mktemp("big") / "big.mp4"
    write_mp4(path, V.resize(square, 240, 320), fps=24)  # (T, 240, 320, 3): > 2x the 37 px short side
    return path


def test_decode_dims_only_for_large_frames() -> None:
    assert V.decode_dims(240, 320, SPEC) == (37, 49)
    assert V.decode_dims(64, 64, SPEC) is None  # within 2x per side: decoded as is (bit-identical path)
    assert V.decode_dims(240, 320, None) is None


def test_scaled_decode_is_close_to_the_full_size_path(big: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scaled = V.load_clip(big, SPEC)
    monkeypatch.setattr(V, "decode_dims", lambda h, w, spec: None)  # today's path: full frames, numpy resample
    full = V.load_clip(big, SPEC)
    assert scaled.shape == full.shape == (3, 4, 32, 32)
    diff = np.abs(scaled - full) * 255 * np.asarray(SPEC.std)[:, None, None, None]  # 0..255 units
    assert diff.mean() < 3 and np.percentile(diff, 99) < 20


def test_scaled_decode_without_pyav_probe(big: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = V.load_clip(big, SPEC)
    monkeypatch.setattr(V, "_probe_dims", lambda src, name: None)  # the edge without PyAV: reopened scaled
    assert np.array_equal(V.load_clip(big, SPEC), expected)
    train = V.load_clip(big, SPEC, train=True, rng=1)
    assert train.shape == (3, 4, 32, 32)


def test_limits_are_independent(big: Path) -> None:
    assert V.decode_info(big, limits=V.VideoLimits(max_frames=12, max_frame_pixels=320 * 240)).num_frames == 12
    with pytest.raises(InvalidVideo, match="too large"):
        V.load_clip(big, SPEC, limits=V.VideoLimits(max_frames=11))
    with pytest.raises(InvalidVideo, match="too large"):
        V.load_clip(big, SPEC, limits=V.VideoLimits(max_frame_pixels=320 * 240 - 1))
    with pytest.raises(InvalidVideo, match="too long"):
        V.load_clip(big, SPEC, limits=V.VideoLimits(max_duration_s=0.4))  # 12 frames at 24 fps = 0.5 s
