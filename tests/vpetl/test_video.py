"""vpetl.video: sampling, spatial transforms, normalisation, decoding real mp4 files, and bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import av
import numpy as np
import pytest

from vpetl import video as V
from vpetl.data.synth import write_mp4
from vpetl.errors import InvalidVideo
from vpetl.protocol import InputSpec

REPO = Path(__file__).resolve().parents[2]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _gray_ramp(frames: int, height: int, width: int) -> np.ndarray:
    """Flat frames whose grey level encodes the frame index (10 + 5·t), with a thin marker stripe."""
    video = np.empty((frames, height, width, 3), np.uint8)
    video[:] = (10 + 5 * np.arange(frames, dtype=np.uint8))[:, None, None, None]
    return video


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("video")
    paths = {"ramp": root / "ramp.mp4", "wide": root / "wide.mp4", "const": root / "const.mp4"}
    write_mp4(paths["ramp"], _gray_ramp(40, 64, 64))
    rng = np.random.default_rng(0)
    # smooth random content, 4:3, so crops and resizes have something to show
    small = rng.integers(0, 256, (1, 12, 16, 3)).astype(np.uint8)
    wide = V.resize(small, 120, 160)
    write_mp4(paths["wide"], np.repeat(wide, 24, axis=0))
    write_mp4(paths["const"], np.full((12, 48, 64, 3), (200, 100, 50), np.uint8))
    paths["webm"] = root / "ramp.webm"  # Something-Something v2 ships VP9 webm
    with av.open(str(paths["webm"]), "w", format="webm") as container:
        stream = container.add_stream("libvpx-vp9", rate=12)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for frame in _gray_ramp(20, 48, 64):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return paths


# ------------------------------------------------------------------------------------------------ sampling


def test_dense_eval_is_centred() -> None:
    idx = V.sample_indices(100, 8, sampling="dense", sampling_rate=4)
    assert idx.tolist() == [35 + 4 * i for i in range(8)]  # span 29, room 71 → start 35


def test_dense_too_short_repeats_last_frame() -> None:
    assert V.sample_indices(10, 8, sampling_rate=2).tolist() == [0, 2, 4, 6, 8, 9, 9, 9]
    assert V.sample_indices(10, 8, sampling_rate=2, train=True, rng=1).tolist() == [0, 2, 4, 6, 8, 9, 9, 9]


def test_dense_train_random_start_is_seeded_and_fits() -> None:
    starts = set()
    for seed in range(200):
        idx = V.sample_indices(50, 8, sampling_rate=3, train=True, rng=seed)
        assert np.array_equal(np.diff(idx), np.full(7, 3)) and idx[0] >= 0 and idx[-1] <= 49
        assert np.array_equal(idx, V.sample_indices(50, 8, sampling_rate=3, train=True, rng=seed))
        starts.add(int(idx[0]))
    assert starts == set(range(50 - 22 + 1))  # every start that fits is reachable


def test_dense_multi_view_spreads_clips() -> None:
    starts = [int(V.sample_indices(100, 8, sampling_rate=4, clip_index=i, num_clips=4)[0]) for i in range(4)]
    assert starts == [0, 23, 47, 71]


def test_uniform_eval_and_train() -> None:
    assert V.sample_indices(80, 8, sampling="uniform").tolist() == [5, 15, 25, 35, 45, 55, 65, 75]
    two = [V.sample_indices(80, 8, sampling="uniform", clip_index=i, num_clips=2).tolist() for i in range(2)]
    assert two == [[2, 12, 22, 32, 42, 52, 62, 72], [7, 17, 27, 37, 47, 57, 67, 77]]
    for seed in range(20):
        idx = V.sample_indices(80, 8, sampling="uniform", train=True, rng=seed)
        assert np.all(idx // 10 == np.arange(8))  # one frame inside each segment
    assert V.sample_indices(3, 6, sampling="uniform").tolist() == [0, 0, 1, 1, 2, 2]


def test_sampling_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        V.sample_indices(0, 8)
    with pytest.raises(ValueError):
        V.sample_indices(10, 8, sampling="bogus")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ spatial


def _reference_bilinear(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Per-pixel loop bilinear (half-pixel centres, clamped borders) to check the vectorised one."""
    h, w, c = img.shape
    out = np.zeros((out_h, out_w, c))
    for i in range(out_h):
        for j in range(out_w):
            y = min(max((i + 0.5) * h / out_h - 0.5, 0), h - 1)
            x = min(max((j + 0.5) * w / out_w - 0.5, 0), w - 1)
            y0, x0 = int(y), int(x)
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            dy, dx = y - y0, x - x0
            out[i, j] = ((1 - dy) * (1 - dx) * img[y0, x0] + (1 - dy) * dx * img[y0, x1]
                         + dy * (1 - dx) * img[y1, x0] + dy * dx * img[y1, x1])
    return out


def test_resize_matches_reference_and_is_deterministic() -> None:
    img = np.random.default_rng(0).random((1, 9, 13, 3)).astype(np.float32) * 255
    for out_h, out_w in [(12, 20), (7, 11), (9, 13)]:
        got = V.resize(img, out_h, out_w)
        np.testing.assert_allclose(got[0], _reference_bilinear(img[0], out_h, out_w), atol=1e-3)
        assert np.array_equal(got, V.resize(img, out_h, out_w))


def test_resize_shrink_box_filters_and_keeps_constants() -> None:
    img = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    half = V.resize(img, 4, 4)  # exactly 2x: block means
    blocks = img.reshape(2, 4, 2, 4, 2, 3).astype(np.float64).mean(axis=(2, 4))  # (2, 4, 4, 3)
    assert half.dtype == np.uint8 and np.abs(half - np.floor(blocks + 0.5)).max() <= 1
    const = np.full((3, 50, 70, 3), 77, np.uint8)
    assert np.all(V.resize(const, 17, 23) == 77) and np.all(V.resize_short_side(const, 40) == 77)
    assert V.resize_short_side(const, 40).shape == (3, 40, 56, 3)


def test_center_crop_and_spatial_offsets() -> None:
    frames = np.arange(2 * 6 * 8 * 3).reshape(2, 6, 8, 3)  # (T, H, W, C)
    assert np.array_equal(V.center_crop(frames, 4), frames[:, 1:5, 2:6])
    assert V.spatial_crop_offsets(256, 341, 224, 3) == [(16, 0), (16, 58), (16, 117)]
    assert V.spatial_crop_offsets(341, 256, 224, 3) == [(0, 16), (58, 16), (117, 16)]
    assert V.spatial_crop_offsets(224, 224, 224, 3) == [(0, 0)] * 3
    with pytest.raises(ValueError):
        V.center_crop(frames, 7)


def test_multi_scale_crop_box() -> None:
    allowed = {int(256 * s) for s in V.MULTI_SCALES} | {224}
    seen = set()
    for seed in range(300):
        top, left, ch, cw = V.multi_scale_crop_box(256, 341, 224, seed)
        assert ch in allowed and cw in allowed and top + ch <= 256 and left + cw <= 341
        order = sorted(allowed)
        assert abs(order.index(ch) - order.index(cw)) <= 1  # max_distort = 1
        seen.add((ch, cw))
        assert V.multi_scale_crop_box(256, 341, 224, seed) == (top, left, ch, cw)
    assert len(seen) == 10  # 4 scales, pairs within one step: 4 + 2·3
    frames = np.zeros((2, 256, 341, 3), np.uint8)
    assert V.multi_scale_crop(frames, 112, rng=0).shape == (2, 112, 112, 3)


def test_normalize_values_and_layout() -> None:
    frames = np.zeros((2, 3, 4, 3), np.uint8)  # (T, H, W, C)
    frames[..., 0], frames[..., 1], frames[..., 2] = 0, 255, 128
    out = V.normalize(frames, MEAN, STD)
    assert out.shape == (3, 2, 3, 4) and out.dtype == np.float32  # (C, T, H, W)
    expected = [(v / 255 - m) / s for v, m, s in zip((0, 255, 128), MEAN, STD, strict=True)]
    np.testing.assert_allclose(out.reshape(3, -1).mean(axis=1), expected, rtol=1e-6)


# ------------------------------------------------------------------------------------------------ decoding


def test_decode_info_and_read_frames(clips: dict[str, Path]) -> None:
    info = V.decode_info(clips["ramp"])
    assert (info.num_frames, info.height, info.width) == (40, 64, 64) and info.fps == 15
    idx = [7, 0, 39, 7, 20]
    frames = V.read_frames(clips["ramp"], idx)
    assert frames.shape == (5, 64, 64, 3) and frames.dtype == np.uint8
    np.testing.assert_allclose(frames.reshape(5, -1).mean(axis=1), [10 + 5 * i for i in idx], atol=2.5)
    with pytest.raises(InvalidVideo):
        V.read_frames(clips["ramp"], [40])


def test_webm_vp9(clips: dict[str, Path]) -> None:
    info = V.decode_info(clips["webm"])
    assert (info.num_frames, info.height, info.width) == (20, 48, 64)
    frames = V.read_frames(clips["webm"], [0, 19])
    np.testing.assert_allclose(frames.reshape(2, -1).mean(axis=1), [10, 105], atol=3)
    spec = InputSpec(num_frames=8, sampling="uniform", size=32)
    assert V.load_clip(clips["webm"].read_bytes(), spec).shape == (3, 8, 32, 32)


def test_load_clip_constant_colour_normalises_exactly(clips: dict[str, Path]) -> None:
    spec = InputSpec(num_frames=4, sampling_rate=2, size=32, mean=MEAN, std=STD)
    for train in (False, True):
        clip = V.load_clip(clips["const"], spec, train=train, rng=3)
        assert clip.shape == (3, 4, 32, 32) and clip.dtype == np.float32
        for c, value in enumerate((200, 100, 50)):
            expected = (value / 255 - MEAN[c]) / STD[c]
            assert np.abs(clip[c] - expected).max() <= 3 / 255 / STD[c]  # yuv420p round trip: a few levels


def test_load_clip_matches_the_composed_pieces(clips: dict[str, Path]) -> None:
    spec = InputSpec(num_frames=8, sampling_rate=2, size=96)
    clip = V.load_clip(clips["wide"], spec)
    idx = V.sample_indices(24, 8, sampling_rate=2)
    frames = V.read_frames(clips["wide"], idx)
    composed = V.normalize(V.center_crop(V.resize_short_side(frames, spec.resize_short), 96), spec.mean, spec.std)
    assert clip.shape == composed.shape == (3, 8, 96, 96)
    pixel_diff = np.abs(clip - composed) * 255 * np.asarray(spec.std)[:, None, None, None]  # back to 0..255 units
    assert pixel_diff.max() <= 0.501  # one resample vs two: only the intermediate uint8 rounding differs


def test_load_clip_train_is_seeded_and_bytes_equal_path(clips: dict[str, Path]) -> None:
    spec = InputSpec(num_frames=8, sampling_rate=2, size=64)
    a = V.load_clip(clips["wide"], spec, train=True, rng=np.random.default_rng(5))
    b = V.load_clip(clips["wide"], spec, train=True, rng=5)
    assert np.array_equal(a, b)
    assert any(not np.array_equal(a, V.load_clip(clips["wide"], spec, train=True, rng=s)) for s in range(6, 10))
    data = clips["wide"].read_bytes()
    assert np.array_equal(V.load_clip(data, spec), V.load_clip(clips["wide"], spec))
    assert np.array_equal(V.load_clip(data, spec), V.load_clip(str(clips["wide"]), spec))


def test_load_views(clips: dict[str, Path]) -> None:
    spec = InputSpec(num_frames=4, sampling_rate=2, size=64)
    views = V.load_views(clips["wide"], spec, num_clips=2, num_crops=3)
    assert views.shape == (6, 3, 4, 64, 64) and views.dtype == np.float32  # (V, C, T, H, W)
    assert not np.array_equal(views[0], views[2])  # left and right crops of a 4:3 frame differ
    single = V.load_views(clips["wide"], spec, num_clips=1, num_crops=1)
    assert np.array_equal(single[0], V.load_clip(clips["wide"], spec))
    ramp = V.load_views(clips["ramp"], InputSpec(num_frames=4, sampling_rate=2, size=32), 4, 1)
    means = ramp[:, 0].mean(axis=(1, 2, 3))
    assert np.all(np.diff(means) > 0)  # later temporal clips see later (brighter) frames


def test_threads_decode_concurrently_and_restore_stderr(clips: dict[str, Path]) -> None:
    spec = InputSpec(num_frames=8, sampling_rate=2, size=64)
    expected = V.load_clip(clips["wide"], spec)
    before = os.fstat(2)
    results: list[bool] = []

    def work() -> None:
        for _ in range(5):
            results.append(np.array_equal(V.load_clip(clips["wide"], spec), expected))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 20
    after = os.fstat(2)
    assert (before.st_ino, before.st_dev) == (after.st_ino, after.st_dev)


# ------------------------------------------------------------------------------------------------ bad input


def _zero_frame(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=15)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()  # header and an empty track, no frame


def _audio_only(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def bad_inputs(clips: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | bytes]:
    root = tmp_path_factory.mktemp("bad")
    good = clips["wide"].read_bytes()
    files = {"empty": b"", "text": b"this is not a video\n" * 20, "tiny": b"hello",
             "truncated": good[: len(good) // 2],
             "random": np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()}
    out: dict[str, Path | bytes] = {}
    for name, data in files.items():
        (root / f"{name}.mp4").write_bytes(data)
        out[name] = root / f"{name}.mp4"
        out[f"{name}-bytes"] = data
    _zero_frame(root / "zero.mp4")
    _audio_only(root / "audio.mp4")
    out["zero-frames"], out["audio-only"] = root / "zero.mp4", root / "audio.mp4"
    out["missing"] = root / "missing.mp4"
    return out


@pytest.mark.parametrize("kind", ["empty", "text", "tiny", "truncated", "random", "empty-bytes", "text-bytes",
                                  "tiny-bytes", "truncated-bytes", "random-bytes", "zero-frames", "audio-only",
                                  "missing"])
@pytest.mark.parametrize("probe", [True, False], ids=["pyav-probe", "decord-only"])
def test_bad_input_raises_invalid_video(bad_inputs: dict[str, Path | bytes], kind: str, probe: bool,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    if not probe:  # the edge may run without PyAV: decord alone must map its own errors
        monkeypatch.setattr(V, "_probe_dims", lambda src, name: None)
    spec = InputSpec(num_frames=4, size=32)
    with pytest.raises(InvalidVideo) as info:
        V.load_clip(bad_inputs[kind], spec)
    assert info.value.code == "invalid_video" and info.value.message
    assert "\\x" not in info.value.message and len(info.value.message) < 200  # no raw bytes echoed


def test_too_large_refused_from_metadata(clips: dict[str, Path]) -> None:
    spec = InputSpec(num_frames=4, size=32)
    with pytest.raises(InvalidVideo, match="too large"):
        V.load_clip(clips["wide"], spec, limits=V.VideoLimits(max_frames=10, max_pixels=160 * 120))
    with pytest.raises(InvalidVideo, match="too large"):
        V.decode_info(clips["wide"], limits=V.VideoLimits(max_frame_pixels=100 * 100))
    assert V.decode_info(clips["wide"], limits=V.VideoLimits(max_frames=24, max_pixels=160 * 120)).num_frames == 24


def test_corrupt_middle_never_crashes(clips: dict[str, Path]) -> None:
    data = bytearray(clips["wide"].read_bytes())
    rng = np.random.default_rng(0)
    for start in (len(data) // 3, len(data) // 2):
        damaged = bytes(data[:start]) + rng.integers(0, 256, 600, dtype=np.uint8).tobytes() + bytes(data[start + 600:])
        try:
            clip = V.load_clip(damaged, InputSpec(num_frames=8, sampling_rate=2, size=32))
            assert clip.shape == (3, 8, 32, 32)  # the decoder concealed the damage
        except InvalidVideo:
            pass


def test_ffmpeg_noise_stays_off_stderr(bad_inputs: dict[str, Path | bytes]) -> None:
    code = (
        "import sys\n"
        "from vpetl.video import load_clip\nfrom vpetl.protocol import InputSpec\n"
        "from vpetl.errors import InvalidVideo\n"
        f"for p in {[str(bad_inputs[k]) for k in ('text', 'tiny', 'truncated', 'random', 'audio-only')]!r}:\n"
        "    for src in (p, open(p, 'rb').read()):\n"
        "        try:\n            load_clip(src, InputSpec(num_frames=4, size=32))\n"
        "        except InvalidVideo as e:\n            print(e.code)\n"
        "print('stderr still works', file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["invalid_video"] * 10
    assert result.stderr.strip() == "stderr still works"


def test_import_is_torch_free(clips: dict[str, Path]) -> None:
    code = (
        "import sys\nimport vpetl.video, vpetl.data.readers, vpetl.data.synth\n"
        "from vpetl.protocol import InputSpec\n"
        f"vpetl.video.load_clip({str(clips['ramp'])!r}, InputSpec(num_frames=4, size=32))\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
