"""Spatial transforms of decoded frames (torch-free numpy): resize, crops, GroupMultiScaleCrop, normalise.

Frames are (T, H, W, C), uint8 or float in 0..255. Split out of :mod:`vpetl.video` (which re-exports every name)
so the decode module stays about decoding; the server, the trainer and the edge all reach these through it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RngLike = np.random.Generator | int | None

#: Scales of GroupMultiScaleCrop as in TSN / VideoMAE / V-PETL (fractions of the short side).
MULTI_SCALES: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)

__all__ = [
    "MULTI_SCALES", "RngLike", "as_rng", "resample", "resize", "resize_short_side", "short_side_dims", "center_crop",
    "spatial_crop_offsets", "multi_scale_crop_box", "multi_scale_crop", "normalize",
]


def as_rng(rng: RngLike) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def resample(frames: np.ndarray, top: float, left: float, box_h: float, box_w: float,
              out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resample of the box ``(top, left, box_h, box_w)`` (source pixels) to ``(out_h, out_w)``: float32.

    Half-pixel centres (as cv2/PIL/torch ``align_corners=False``); borders clamp. When shrinking by 2× or more, a
    box average over whole pixel blocks runs first so the result does not alias (bilinear alone skips pixels).
    Pure numpy, vectorised over all frames, deterministic. Measured against decord's resize-on-open (320×240 →
    256 short side, 16 frames): as fast for the test crop and ≈30% faster for training crops (decord must resize
    the whole frame, then numpy resamples the crop again), and it does not depend on the decoder build.
    """
    t, h, w, c = frames.shape
    if (box_h == out_h and box_w == out_w and float(top).is_integer() and float(left).is_integer()
            and 0 <= top and top + box_h <= h and 0 <= left and left + box_w <= w):
        # An integer crop at scale 1 (e.g. a centre crop with no resize): no interpolation at all.
        return frames[:, int(top):int(top) + out_h, int(left):int(left) + out_w].astype(np.float32)
    ky, kx = max(int(box_h // out_h), 1), max(int(box_w // out_w), 1)
    src: np.ndarray = frames
    if ky > 1 or kx > 1:
        hh, ww = h // ky * ky, w // kx * kx
        # (T, hh, ww, C) -> (T, hh/ky, ky, ww/kx, kx, C) -> mean over each ky×kx block -> (T, hh/ky, ww/kx, C)
        src = frames[:, :hh, :ww].reshape(t, hh // ky, ky, ww // kx, kx, c).mean(axis=(2, 4), dtype=np.float32)
        top, left, box_h, box_w = top / ky, left / kx, box_h / ky, box_w / kx
        h, w = hh // ky, ww // kx

    def axis(start: float, length: float, out: int, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = start + (np.arange(out, dtype=np.float64) + 0.5) * (length / out) - 0.5
        pos = np.clip(pos, 0, limit - 1)
        lo = np.floor(pos).astype(np.intp)
        hi = np.minimum(lo + 1, limit - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    y0, y1, wy = axis(top, box_h, out_h, h)
    x0, x1, wx = axis(left, box_w, out_w, w)
    # Columns first, gathered from the still-uint8 rows the box touches (the cheapest pass runs on the most data);
    # (T, rows, W, C) is viewed as (T, rows, W*C) so a column gather is one np.take on the contiguous last axis.
    rmin, rmax = int(y0.min()), int(y1.max()) + 1
    flat = src[:, rmin:rmax].reshape(t, rmax - rmin, w * c)  # (T, rows, W*C)
    channels = np.arange(c)
    i0 = (x0[:, None] * c + channels).ravel()  # (out_w*C,) flat column indices
    i1 = (x1[:, None] * c + channels).ravel()
    left_px = np.take(flat, i0, axis=2).astype(np.float32)  # (T, rows, out_w*C)
    right_px = np.take(flat, i1, axis=2).astype(np.float32)
    right_px -= left_px
    right_px *= np.repeat(wx, c)
    left_px += right_px
    top_px = left_px[:, y0 - rmin]  # (T, out_h, out_w*C)
    bottom_px = left_px[:, y1 - rmin]
    bottom_px -= top_px
    bottom_px *= wy[None, :, None]
    top_px += bottom_px
    return top_px.reshape(t, out_h, out_w, c)  # (T, out_h, out_w, C)


def _like(result: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Cast a float32 resample back to the input dtype (uint8 rounds half up; values are already in range)."""
    if frames.dtype == np.uint8:
        return (result + 0.5).astype(np.uint8)
    return result.astype(frames.dtype, copy=False)


def resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of (T, H, W, C) frames to (T, height, width, C); keeps the dtype."""
    _, h, w, _ = frames.shape
    if (h, w) == (height, width):
        return frames
    return _like(resample(frames, 0.0, 0.0, h, w, height, width), frames)


def short_side_dims(height: int, width: int, short: int) -> tuple[int, int]:
    """(height, width) after scaling so that the shorter side is ``short`` (aspect ratio kept, rounded)."""
    if height <= width:
        return short, max(int(round(width * short / height)), 1)
    return max(int(round(height * short / width)), 1), short


def resize_short_side(frames: np.ndarray, short: int) -> np.ndarray:
    """Resize so the shorter side equals ``short`` (bilinear; keeps the dtype)."""
    return resize(frames, *short_side_dims(frames.shape[1], frames.shape[2], short))


def center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """The central ``size × size`` window (frames must be at least that large)."""
    _, h, w, _ = frames.shape
    if h < size or w < size:
        raise ValueError(f"cannot crop {size}x{size} from {w}x{h} frames")
    top, left = (h - size) // 2, (w - size) // 2
    return frames[:, top:top + size, left:left + size]


def spatial_crop_offsets(height: int, width: int, size: int, num_crops: int) -> list[tuple[int, int]]:
    """(top, left) of ``num_crops`` square crops spread evenly along the long side (one crop: the centre).

    This is the test-time "3 spatial crops" of VideoMAE/V-PETL: after a short-side resize they slide along the long
    axis only, so on a square frame all crops coincide.
    """
    if num_crops < 1:
        raise ValueError("num_crops must be >= 1")
    cy, cx = (height - size) // 2, (width - size) // 2
    if num_crops == 1:
        return [(cy, cx)]
    if width >= height:
        return [(cy, int(round(k * (width - size) / (num_crops - 1)))) for k in range(num_crops)]
    return [(int(round(k * (height - size) / (num_crops - 1))), cx) for k in range(num_crops)]


def multi_scale_crop_box(
    height: int,
    width: int,
    size: int,
    rng: RngLike = None,
    *,
    scales: Sequence[float] = MULTI_SCALES,
    max_distort: int = 1,
    more_fix_crop: bool = True,
) -> tuple[int, int, int, int]:
    """A GroupMultiScaleCrop box ``(top, left, crop_h, crop_w)`` as in TSN/VideoMAE (``fix_crop=True``).

    Crop sides are ``scale × short side`` for each scale (snapped to ``size`` within 3 px); height and width
    scales may differ by at most ``max_distort`` steps; the offset is one of 5 (13 with ``more_fix_crop``) fixed
    positions (corners, centre, edge centres, quarter points).
    """
    gen = as_rng(rng)
    base = min(height, width)
    sides = [int(base * s) for s in scales]
    sides = [size if abs(s - size) < 3 else s for s in sides]
    pairs = [(sh, sw) for i, sh in enumerate(sides) for j, sw in enumerate(sides) if abs(i - j) <= max_distort]
    crop_h, crop_w = pairs[int(gen.integers(len(pairs)))]
    crop_h, crop_w = min(crop_h, height), min(crop_w, width)
    hs, ws = (height - crop_h) // 4, (width - crop_w) // 4
    offsets = [(0, 0), (0, 4 * ws), (4 * hs, 0), (4 * hs, 4 * ws), (2 * hs, 2 * ws)]
    if more_fix_crop:
        offsets += [(2 * hs, 0), (2 * hs, 4 * ws), (4 * hs, 2 * ws), (0, 2 * ws),
                    (hs, ws), (hs, 3 * ws), (3 * hs, ws), (3 * hs, 3 * ws)]
    top, left = offsets[int(gen.integers(len(offsets)))]
    return top, left, crop_h, crop_w


def multi_scale_crop(frames: np.ndarray, size: int, rng: RngLike = None, *,
                     scales: Sequence[float] = MULTI_SCALES, max_distort: int = 1,
                     more_fix_crop: bool = True) -> np.ndarray:
    """GroupMultiScaleCrop: one random box shared by all frames, resized to ``size × size`` (keeps the dtype)."""
    _, h, w, _ = frames.shape
    top, left, ch, cw = multi_scale_crop_box(h, w, size, rng, scales=scales, max_distort=max_distort,
                                             more_fix_crop=more_fix_crop)
    return _like(resample(frames, top, left, ch, cw, size, size), frames)


def normalize(frames: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(T, H, W, C) pixels in 0..255 → (C, T, H, W) float32 ``(x / 255 - mean) / std``."""
    mean_ = np.asarray(mean, dtype=np.float64)
    std_ = np.asarray(std, dtype=np.float64)
    scale = (1.0 / (255.0 * std_)).astype(np.float32)[:, None, None, None]  # (C, 1, 1, 1)
    shift = (-mean_ / std_).astype(np.float32)[:, None, None, None]
    t, h, w, c = frames.shape
    out = np.empty((c, t, h, w), dtype=np.float32)
    np.multiply(frames.transpose(3, 0, 1, 2), scale, out=out, casting="unsafe")  # (C, T, H, W) view of the input
    out += shift
    return out
