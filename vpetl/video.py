"""Decode, sample and preprocess video clips (torch-free: numpy + decord; PyAV only to read metadata).

One :class:`~vpetl.protocol.InputSpec` drives the whole path, so the server, the trainer and the edge produce the
same model input from the same file:

1. **open** a path or bytes with decord (only the frames a clip needs are decoded, via ``get_batch``), after
   checking the container's metadata against :class:`VideoLimits` (frame size, frame count and duration, each on
   its own: a 10-hour or an 8K upload is refused before any frame is decoded); frames more than twice the model's
   size per side are decoded already scaled to ``spec.resize_short`` (:func:`decode_dims`), so memory per clip
   follows the model's input size, not the upload's;
2. **sample** frame indices: ``dense`` (``num_frames`` at ``sampling_rate``; random start when training, centred
   at test, the end frame repeated when the video is too short) or ``uniform`` (TSN segments over the whole clip);
3. **resize / crop**: short side to ``spec.resize_short`` then a centre crop of ``spec.size`` (test), or a
   GroupMultiScaleCrop (scales 1, .875, .75, .66) resized to ``spec.size`` (training). Both are done as *one*
   bilinear resample of the crop box straight from the decoded frames, so nothing outside the crop is resampled
   and pixels are interpolated once;
4. **normalise**: pixels to 0..1, then ``(x - mean) / std``; layout ``(C, T, H, W)`` float32.

Every failure to read a clip (corrupt, truncated, empty, not a video, zero frames, audio only, too large) raises
:class:`~vpetl.errors.InvalidVideo` with a message for humans; ffmpeg's own stderr chatter is silenced.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vpetl.errors import InvalidVideo
from vpetl.protocol import InputSpec
from vpetl.transforms import (
    MULTI_SCALES,
    RngLike,
    as_rng,
    center_crop,
    multi_scale_crop,
    multi_scale_crop_box,
    normalize,
    resample,
    resize,
    resize_short_side,
    short_side_dims,
    spatial_crop_offsets,
)

VideoSource = str | os.PathLike[str] | bytes | bytearray | memoryview

__all__ = [
    "MULTI_SCALES", "VideoInfo", "VideoLimits", "DEFAULT_LIMITS", "decode_info", "decode_dims", "sample_indices",
    "read_frames",
    "resize", "resize_short_side", "short_side_dims", "center_crop", "spatial_crop_offsets", "multi_scale_crop_box",
    "multi_scale_crop", "normalize", "preprocess", "load_clip", "load_views",
]


@dataclass(frozen=True)
class VideoLimits:
    """Bounds checked from metadata before any frame is decoded, each on its own (none is traded against another).

    - ``max_frame_pixels``: pixels of one frame (the decoder allocates whole frames, whatever the clip length;
      ``max_pixels``, when set, is a second per-frame bound kept for callers of the old two-field form);
    - ``max_frames``: frames in the container (decord indexes all of them on open);
    - ``max_duration_s``: seconds of video (when the stream declares a frame rate).
    """

    max_frames: int = 108_000  # one hour at 30 fps
    max_pixels: int | None = None
    max_frame_pixels: int = 7680 * 4320
    max_duration_s: float = 3600.0

    @property
    def frame_pixels(self) -> int:
        """The per-frame bound in force."""
        return min(self.max_frame_pixels, self.max_pixels or self.max_frame_pixels)


DEFAULT_LIMITS = VideoLimits()


@dataclass(frozen=True)
class VideoInfo:
    """Container metadata of the first video stream (``num_frames`` as decord will index it)."""

    num_frames: int
    height: int
    width: int
    fps: float

    @property
    def duration(self) -> float:
        """Seconds (0 when the frame rate is unknown)."""
        return self.num_frames / self.fps if self.fps > 0 else 0.0


# --------------------------------------------------------------------------------------------------------------
# Quiet decoding: ffmpeg writes to fd 2 directly (even at decord's QUIET level), and for in-memory input its error
# line echoes raw bytes of the upload. Redirect fd 2 while any decode is in flight. A reference count (not a lock
# held across the decode) lets concurrent threads decode in parallel: the first one in redirects, the last one out
# restores.
_stderr_lock = threading.Lock()
_stderr_depth = 0
_stderr_saved: int | None = None
_decord_module: Any = None


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    global _stderr_depth, _stderr_saved
    if os.environ.get("VPETL_VIDEO_DEBUG"):  # keep ffmpeg's messages when debugging a codec problem
        yield
        return
    with _stderr_lock:
        if _stderr_depth == 0:
            try:
                sys.stderr.flush()  # Python's buffered stderr must not land in /dev/null
            except (AttributeError, ValueError, OSError):
                pass
            try:
                saved = os.dup(2)
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 2)
                os.close(devnull)
                _stderr_saved = saved
            except OSError:  # no fd 2 at all: nothing to protect
                _stderr_saved = None
        _stderr_depth += 1
    try:
        yield
    finally:
        with _stderr_lock:
            _stderr_depth -= 1
            if _stderr_depth == 0 and _stderr_saved is not None:
                os.dup2(_stderr_saved, 2)
                os.close(_stderr_saved)
                _stderr_saved = None


def _decord() -> Any:
    """Import decord lazily (``import vpetl.video`` stays cheap) and silence its logger once."""
    global _decord_module
    if _decord_module is None:
        try:
            import decord
        except ImportError as exc:  # pragma: no cover - decord is a dependency of both extras
            raise RuntimeError("decoding video needs decord: pip install decord") from exc
        decord.logging.set_level(decord.logging.QUIET)
        _decord_module = decord
    return _decord_module


def _decode_errors() -> tuple[type[BaseException], ...]:
    # decord raises RuntimeError at open, DECORDError (not a RuntimeError) mid-stream, IndexError for frames past
    # a wrong frame count, and an AssertionError for a zero frame count; PyAV raises its FFmpegError subclasses.
    errors: list[type[BaseException]] = [RuntimeError, IndexError, AssertionError, ValueError, OSError, EOFError]
    errors.append(_decord().DECORDError)
    return tuple(errors)


# --------------------------------------------------------------------------------------------------------------
# Opening


def _describe(source: VideoSource) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"uploaded clip ({len(source)} bytes)"
    return f"'{Path(source).name}'"


def _check_source(source: VideoSource) -> str | bytes:
    """Return a path string or the bytes; refuse empty and missing inputs early with a clear message."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise InvalidVideo("the clip is empty (0 bytes)")
        return data
    path = Path(source)
    if not path.is_file():
        raise InvalidVideo(f"{_describe(source)}: no such file")
    if path.stat().st_size == 0:
        raise InvalidVideo(f"{_describe(source)}: the file is empty (0 bytes)")
    return str(path)


def _probe_dims(src: str | bytes, name: str) -> tuple[int, int, float] | None:
    """(height, width, fps) of the first video stream from the container header, or None without PyAV.

    decord exposes no width/height before decoding, so the size bound would otherwise need a decoded frame.
    """
    try:
        import av
    except ImportError:  # the edge may run without PyAV: the caller falls back to decoding frame 0
        return None
    try:
        with av.open(io.BytesIO(src) if isinstance(src, bytes) else src, "r") as container:
            if not container.streams.video:
                what = "is audio-only" if container.streams.audio else "has no video stream (or no video frames)"
                raise InvalidVideo(f"{name}: the file {what}; a video is required")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            return int(stream.codec_context.height), int(stream.codec_context.width), float(rate or 0.0)
    except InvalidVideo:
        raise
    except Exception:  # noqa: BLE001 - PyAV and decord ship different ffmpeg builds: let decord decide
        return None


def _check_size(name: str, height: int, width: int, limits: VideoLimits) -> None:
    if height <= 0 or width <= 0:
        raise InvalidVideo(f"{name}: the video stream has no frame size")
    if height * width > limits.frame_pixels:
        raise InvalidVideo(
            f"{name}: frames of {width}x{height} are too large (limit {limits.frame_pixels} pixels per frame)"
        )


def _check_length(name: str, num_frames: int, fps: float, limits: VideoLimits) -> None:
    if num_frames > limits.max_frames:
        raise InvalidVideo(
            f"{name}: too large to decode: {num_frames} frames exceeds the limit of {limits.max_frames} frames"
        )
    if fps > 0 and num_frames / fps > limits.max_duration_s:
        raise InvalidVideo(
            f"{name}: too long: {num_frames / fps:.0f} s exceeds the limit of {limits.max_duration_s:g} s"
        )


def decode_dims(height: int, width: int, spec: InputSpec | None) -> tuple[int, int] | None:
    """(height, width) to ask the decoder for, or None to decode at the source size.

    Frames more than twice the model's short-side resize per side are scaled *by the decoder* (ffmpeg's scaler,
    on open) straight to ``spec.resize_short``: a request never holds frames above 4x the model's pixel count, and
    numpy never resamples a full-resolution frame. Smaller frames decode as they are and take the numpy resample
    (bit-identical to the pure-numpy path, and what the tests pin). The two paths differ on large sources by the
    scaler: 1080p/480p synthetic clips measured mean |diff| ~1 and p99 4 of 255 levels, max ~60 at sharp colour
    edges (the decoder scales chroma before the RGB conversion); see BENCHMARKS.md "Data".
    """
    if spec is None:
        return None
    rh, rw = short_side_dims(height, width, spec.resize_short)
    if height * width <= 4 * rh * rw:
        return None
    return rh, rw


@contextlib.contextmanager
def _open(source: VideoSource, limits: VideoLimits,
          spec: InputSpec | None = None) -> Iterator[tuple[Any, VideoInfo, str]]:
    """Yield ``(decord reader, info, name)`` after every metadata check; map every decode error to InvalidVideo.

    With ``spec``, large frames are decoded already scaled (:func:`decode_dims`); ``info`` keeps the source size.
    """
    name = _describe(source)
    src = _check_source(source)
    decord = _decord()
    errors = _decode_errors()

    def reader_for(dims: tuple[int, int] | None) -> Any:
        height, width = dims if dims is not None else (-1, -1)
        try:
            return decord.VideoReader(io.BytesIO(src) if isinstance(src, bytes) else src, ctx=decord.cpu(0),
                                      width=width, height=height)
        except errors as exc:
            raise InvalidVideo(f"{name}: not a readable video (corrupt, truncated or not a video file)") from exc

    with _quiet_stderr():
        probed = _probe_dims(src, name)
        if probed is not None:  # refuse oversized frames before decord allocates anything
            _check_size(name, probed[0], probed[1], limits)
        reader = reader_for(decode_dims(probed[0], probed[1], spec) if probed is not None else None)
        try:
            info = _checked_info(reader, probed, name, limits, errors)
            if probed is None and (dims := decode_dims(info.height, info.width, spec)) is not None:
                # no header probe (the edge without PyAV): frame 0 told the size; reopen scaled
                _close(reader)
                reader = reader_for(dims)
        except BaseException:
            _close(reader)
            raise
    try:
        # stderr is restored while the caller's code runs (decoding re-silences it in _get_frames)
        yield reader, info, name
    finally:
        _close(reader)


def _checked_info(reader: Any, probed: tuple[int, int, float] | None, name: str, limits: VideoLimits,
                  errors: tuple[type[BaseException], ...]) -> VideoInfo:
    num_frames = len(reader)
    if num_frames <= 0:
        raise InvalidVideo(f"{name}: the video has no frames")
    _check_length(name, num_frames, probed[2] if probed is not None else 0.0, limits)
    try:
        if probed is None:
            # No header probe available: the frame size is only known from one decoded frame (the per-frame
            # pixel bound then applies after that one frame).
            height, width = (int(v) for v in _to_numpy(reader.get_batch([0])).shape[1:3])
            fps = float(reader.get_avg_fps())
        else:
            height, width, fps = probed
    except errors as exc:
        raise InvalidVideo(f"{name}: the first frame cannot be decoded (corrupt video)") from exc
    _check_size(name, height, width, limits)
    _check_length(name, num_frames, fps, limits)
    return VideoInfo(num_frames=num_frames, height=height, width=width, fps=fps)


def _close(reader: Any) -> None:
    """Free decord's native reader now, silenced: ffmpeg may log while closing, and a reader left to the garbage
    collector (e.g. held by a traceback) would print long after stderr was restored."""
    with _quiet_stderr():
        try:
            if getattr(reader, "_handle", None) is not None:
                reader.__del__()
        finally:
            reader._handle = None  # decord's __del__ does not clear it: never free twice


def _to_numpy(batch: Any) -> np.ndarray:
    """decord NDArray → numpy (also when another module switched decord's bridge to torch)."""
    if hasattr(batch, "asnumpy"):
        return batch.asnumpy()
    if hasattr(batch, "numpy"):
        return batch.numpy()
    return np.asarray(batch)


def _get_frames(reader: Any, indices: np.ndarray, name: str) -> np.ndarray:
    """Decode exactly the distinct frames asked for, in ascending order, then expand repeats: (T, H, W, 3) uint8."""
    unique, inverse = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)
    with _quiet_stderr():
        try:
            frames = _to_numpy(reader.get_batch(unique.tolist()))
        except _decode_errors() as exc:
            raise InvalidVideo(f"{name}: frames cannot be decoded (corrupt or truncated video)") from exc
    if frames.ndim != 4 or frames.shape[0] != len(unique) or frames.shape[-1] != 3:
        raise InvalidVideo(f"{name}: the decoder returned no usable frames")
    return frames if len(unique) == len(indices) and np.all(inverse == np.arange(len(unique))) else frames[inverse]


def decode_info(source: VideoSource, *, limits: VideoLimits = DEFAULT_LIMITS) -> VideoInfo:
    """Frame count, size and frame rate of a clip, validated against ``limits`` (decodes no frame with PyAV)."""
    with _open(source, limits) as (_, info, _name):
        return info


def read_frames(source: VideoSource, indices: Sequence[int] | np.ndarray, *,
                limits: VideoLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode the given frame indices (repeats allowed, any order): (T, H, W, 3) uint8 RGB."""
    indices = np.asarray(indices, dtype=np.int64)
    with _open(source, limits) as (reader, info, name):
        if indices.size == 0:
            raise ValueError("read_frames needs at least one frame index")
        if indices.min() < 0 or indices.max() >= info.num_frames:
            raise InvalidVideo(f"{name}: frame index out of range (the video has {info.num_frames} frames)")
        return _get_frames(reader, indices, name)


# --------------------------------------------------------------------------------------------------------------
# Sampling


def sample_indices(
    num_video_frames: int,
    num_frames: int,
    *,
    sampling: Literal["dense", "uniform"] = "dense",
    sampling_rate: int = 1,
    train: bool = False,
    rng: RngLike = None,
    clip_index: int = 0,
    num_clips: int = 1,
) -> np.ndarray:
    """Frame indices (``num_frames``, int64, within ``[0, num_video_frames)``) of one clip.

    - ``dense``: ``num_frames`` frames at stride ``sampling_rate``. Training picks the start uniformly among those
      that fit; test takes clip ``clip_index`` of ``num_clips`` evenly spread starts (one clip: centred). When the
      video is shorter than the span, indices past the end repeat the last frame.
    - ``uniform`` (TSN): the video is cut into ``num_frames`` equal segments and one frame is taken per segment — at
      a random offset when training, at offset ``(clip_index + 0.5) / num_clips`` of the segment at test.
    """
    if num_video_frames <= 0:
        raise ValueError("the video has no frames")
    if num_frames <= 0 or sampling_rate <= 0 or not 0 <= clip_index < num_clips:
        raise ValueError("num_frames and sampling_rate must be positive and 0 <= clip_index < num_clips")
    steps = np.arange(num_frames, dtype=np.int64)
    if sampling == "dense":
        span = (num_frames - 1) * sampling_rate + 1
        room = max(num_video_frames - span, 0)
        if train:
            start = int(as_rng(rng).integers(0, room + 1))
        elif num_clips == 1:
            start = room // 2
        else:
            start = int(clip_index * room / (num_clips - 1))
        indices = start + steps * sampling_rate
    elif sampling == "uniform":
        segment = num_video_frames / num_frames
        if train:
            offsets = as_rng(rng).random(num_frames)
        else:
            offsets = np.full(num_frames, (clip_index + 0.5) / num_clips)
        indices = np.floor((steps + offsets) * segment).astype(np.int64)
    else:
        raise ValueError(f"unknown sampling {sampling!r}: expected 'dense' or 'uniform'")
    return np.minimum(indices, num_video_frames - 1)


# --------------------------------------------------------------------------------------------------------------
# High level


def _box_in_source(h: int, w: int, short: int, top: float, left: float, bh: float,
                   bw: float) -> tuple[float, float, float, float]:
    """Map a box given on the short-side-resized frame back to source pixels (so only one resample runs)."""
    rh, rw = short_side_dims(h, w, short)
    sy, sx = h / rh, w / rw
    return top * sy, left * sx, bh * sy, bw * sx


def preprocess(frames: np.ndarray, spec: InputSpec, *, train: bool = False, rng: RngLike = None,
               crop: tuple[int, int] | None = None) -> np.ndarray:
    """Decoded frames (T, H, W, 3) → model input (C, T, size, size) float32, in one bilinear resample.

    Test: short side → ``spec.resize_short`` then the centre crop (or the crop at ``crop = (top, left)`` on the
    resized frame); training: a multi-scale crop box drawn from ``rng``, resized to ``spec.size``.
    """
    _, h, w, _ = frames.shape
    rh, rw = short_side_dims(h, w, spec.resize_short)
    if train:
        top, left, bh, bw = multi_scale_crop_box(rh, rw, spec.size, rng)
    else:
        (top, left), = [crop] if crop is not None else spatial_crop_offsets(rh, rw, spec.size, 1)
        bh = bw = spec.size
    box = _box_in_source(h, w, spec.resize_short, top, left, bh, bw)
    return normalize(resample(frames, *box, spec.size, spec.size), spec.mean, spec.std)


def load_clip(source: VideoSource, spec: InputSpec, *, train: bool = False, rng: RngLike = None,
              limits: VideoLimits = DEFAULT_LIMITS) -> np.ndarray:
    """One model input (C, T, H, W) float32 from a path or bytes, exactly as ``spec`` describes.

    Test (``train=False``): centred clip, short side → ``spec.resize_short``, centre crop ``spec.size``.
    Training: random clip position and a multi-scale crop (from ``rng``: a Generator or seed, so augmentation is
    reproducible).
    """
    gen = as_rng(rng) if train else None
    with _open(source, limits, spec) as (reader, info, name):
        indices = sample_indices(info.num_frames, spec.num_frames, sampling=spec.sampling,
                                 sampling_rate=spec.sampling_rate, train=train, rng=gen)
        frames = _get_frames(reader, indices, name)
    return preprocess(frames, spec, train=train, rng=gen)


def load_views(source: VideoSource, spec: InputSpec, num_clips: int = 4, num_crops: int = 3, *,
               limits: VideoLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Multi-view test input: ``num_clips`` temporal clips × ``num_crops`` spatial crops → (V, C, T, H, W).

    Views are ordered clip-major (``v = clip * num_crops + crop``); every distinct frame is decoded once.
    """
    if num_clips < 1 or num_crops < 1:
        raise ValueError("num_clips and num_crops must be >= 1")
    with _open(source, limits, spec) as (reader, info, name):
        clips = [sample_indices(info.num_frames, spec.num_frames, sampling=spec.sampling,
                                sampling_rate=spec.sampling_rate, clip_index=i, num_clips=num_clips)
                 for i in range(num_clips)]
        flat = _get_frames(reader, np.concatenate(clips), name)  # (num_clips * T, H, W, 3)
    frames = flat.reshape(num_clips, spec.num_frames, *flat.shape[1:])  # (num_clips, T, H, W, 3)
    rh, rw = short_side_dims(frames.shape[2], frames.shape[3], spec.resize_short)
    offsets = spatial_crop_offsets(rh, rw, spec.size, num_crops)
    views = [preprocess(clip, spec, crop=offset) for clip in frames for offset in offsets]
    return np.stack(views)  # (V, C, T, H, W)
