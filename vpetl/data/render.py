"""Vectorised numpy rendering of synthetic action clips (torch-free).

A clip is a background (a procedural texture plus static clutter, seen through a jittering camera), a few
anti-aliased objects (a shape with a texture, moving along a :class:`Track`), a per-frame lighting flicker and
pixel noise. Every step works on whole arrays: an object is drawn on all frames at once inside a per-frame window
around it, gathered and scattered with fancy indexing, so a 32-frame 128² clip renders in a few milliseconds.

Shapes are signed distance functions of object-local coordinates ``(u, v)`` (object radius 1, rotated with the
object), so the same track drives position, size, rotation and opacity, and edges get one pixel of anti-aliasing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

Array = np.ndarray


# --------------------------------------------------------------------------------------------------------------
# Shapes: signed distance (negative inside) in units of the object radius.


def _box(u: Array, v: Array, hx: float, hy: float) -> Array:
    return np.maximum(np.abs(u) - hx, np.abs(v) - hy)


def _rho(u: Array, v: Array) -> Array:
    return np.sqrt(u * u + v * v)


def _pacman(u: Array, v: Array) -> Array:
    mouth = np.maximum(-u, (np.abs(v) - 0.6 * u) * 0.857)  # wedge opening to +u, negative inside the mouth
    return np.maximum(_rho(u, v) - 0.9, -mouth)


SHAPES: dict[str, Callable[[Array, Array], Array]] = {
    "disc": lambda u, v: _rho(u, v) - 0.9,
    "square": lambda u, v: _box(u, v, 0.75, 0.75),
    "triangle": lambda u, v: np.maximum(v, np.maximum(0.866 * u - 0.5 * v, -0.866 * u - 0.5 * v)) - 0.45,
    "diamond": lambda u, v: (np.abs(u) + np.abs(v)) * 0.7071 - 0.62,
    "cross": lambda u, v: np.minimum(_box(u, v, 0.9, 0.3), _box(u, v, 0.3, 0.9)),
    "ring": lambda u, v: np.abs(_rho(u, v) - 0.65) - 0.25,
    "star": lambda u, v: (_rho(u, v) - 0.6 - 0.3 * np.cos(5 * np.arctan2(v, u))) * 0.8,
    "pacman": _pacman,
    "ell": lambda u, v: np.minimum(_box(u + 0.45, v, 0.25, 0.85), _box(u, v - 0.6, 0.7, 0.25)),
}
#: Shapes whose rotation is visible even as a silhouette (used where rotation direction is the label).
ASYMMETRIC_SHAPES = ("triangle", "pacman", "ell", "star", "cross", "square")
#: Shapes with no rotational symmetry. Any other shape looks the same turned by a fraction of a turn (a square by
#: 90°), so a turn of more than half that between two frames looks like a smaller turn the other way; the
#: ``gradient`` texture (one-sided shading) gives any shape a single orientation.
ORIENTED_SHAPES = ("pacman", "ell")
#: The target tasks' objects (main objects and distractors); the ``source`` domain draws from SOURCE_SHAPES only.
TARGET_SHAPES = tuple(SHAPES)

SOURCE_SHAPES: dict[str, Callable[[Array, Array], Array]] = {
    "hexagon": lambda u, v: np.maximum(np.abs(v) * 0.866 + np.abs(u) * 0.5, np.abs(u)) - 0.8,
    "crescent": lambda u, v: np.maximum(_rho(u, v) - 0.9, 0.7 - _rho(u - 0.45, v)),
    "arrow": lambda u, v: np.minimum(
        _box(u + 0.35, v, 0.5, 0.2), np.maximum(np.abs(v) * 0.8 + u - 0.85, -u - 0.05) * 0.78
    ),
    "tee": lambda u, v: np.minimum(_box(u, v + 0.6, 0.85, 0.25), _box(u, v + 0.1, 0.22, 0.75)),
    "half_disc": lambda u, v: np.maximum(_rho(u, v) - 0.9, u),
    "bar": lambda u, v: _box(u, v, 0.9, 0.3),
}
SHAPES.update(SOURCE_SHAPES)
#: Source shapes whose turn is visible whatever the angle (the ``spinning`` class).
SOURCE_ASYMMETRIC = ("crescent", "arrow", "tee", "half_disc")

# Textures: a mix factor in 0..1 between the object's two colours, in object coordinates (it turns with the object).
TEXTURES: dict[str, Callable[[Array, Array, float], Array | None]] = {
    "solid": lambda u, v, f: None,
    "stripes": lambda u, v, f: 0.5 + 0.5 * np.sin(np.pi * f * u),
    "checker": lambda u, v, f: np.clip(0.5 + 2.0 * np.sin(np.pi * f * u) * np.sin(np.pi * f * v), 0.0, 1.0),
    "rings": lambda u, v, f: 0.5 + 0.5 * np.cos(np.pi * f * _rho(u, v)),
    "gradient": lambda u, v, f: np.clip(0.5 + 0.5 * u, 0.0, 1.0),
}


@dataclass
class Track:
    """One object over time: per-frame centre (pixels, world coordinates), radius (pixels), angle, opacity."""

    shape: str
    texture: str
    colors: Array  # (2, 3) in 0..1
    cx: Array  # (T,)
    cy: Array
    radius: Array
    angle: Array
    opacity: Array
    freq: float = 2.0

    def select(self, frames: Array | slice) -> Track:
        """The track at the given frame indices (or slice) only."""
        return Track(
            self.shape,
            self.texture,
            self.colors,
            self.cx[frames],
            self.cy[frames],
            self.radius[frames],
            self.angle[frames],
            self.opacity[frames],
            self.freq,
        )

    def reversed(self) -> Track:
        """The same motion played backwards (receding from approaching, rising from falling …)."""
        return self.select(slice(None, None, -1))


def _reach(track: Track) -> float:
    return float(np.max(track.radius)) * 1.25 + 2.0  # every shape fits in 1.2 radii (square corners)


def draw(frames: Array, track: Track, cam_x: Array, cam_y: Array, reach: float | None = None) -> None:
    """Composite ``track`` onto ``frames`` (T, S, S, 3) float32 in place, seen from a camera offset per frame.

    ``reach`` (pixels, default: from ``track``'s largest radius) sizes the window drawn around the centre.
    """
    t, s = frames.shape[0], frames.shape[1]
    cx = track.cx - cam_x  # screen coordinates
    cy = track.cy - cam_y
    reach = _reach(track) if reach is None else reach
    win = min(int(np.ceil(2 * reach)), s)
    top = np.clip(np.round(cy - win / 2), 0, s - win).astype(np.intp)
    left = np.clip(np.round(cx - win / 2), 0, s - win).astype(np.intp)
    rows = top[:, None] + np.arange(win)  # (T, win)
    cols = left[:, None] + np.arange(win)
    dy = (rows + 0.5).astype(np.float32)[:, :, None] - cy[:, None, None]  # (T, win, 1)
    dx = (cols + 0.5).astype(np.float32)[:, None, :] - cx[:, None, None]  # (T, 1, win)
    cos = np.cos(track.angle).astype(np.float32)[:, None, None]
    sin = np.sin(track.angle).astype(np.float32)[:, None, None]
    inv_r = (1.0 / track.radius).astype(np.float32)[:, None, None]
    u = (dx * cos + dy * sin) * inv_r  # (T, win, win) object-local coordinates
    v = (dy * cos - dx * sin) * inv_r
    dist = SHAPES[track.shape](u, v) * track.radius.astype(np.float32)[:, None, None]  # pixels
    alpha = np.clip(0.5 - dist, 0.0, 1.0) * track.opacity.astype(np.float32)[:, None, None]
    if not alpha.any():
        return
    mix = TEXTURES[track.texture](u, v, track.freq)
    c0, c1 = track.colors.astype(np.float32)
    color = c0 if mix is None else c0 + mix[..., None].astype(np.float32) * (c1 - c0)  # (T, win, win, 3)
    t_idx = np.arange(t)[:, None, None]
    r_idx, c_idx = rows[:, :, None], cols[:, None, :]
    patch = frames[t_idx, r_idx, c_idx]  # (T, win, win, 3) copy of the window
    patch += alpha[..., None] * (color - patch)
    frames[t_idx, r_idx, c_idx] = patch


# --------------------------------------------------------------------------------------------------------------
# Backgrounds


def _upsample(small: Array, size: int) -> Array:
    """Bilinear upsampling of a (g, g, C) grid to (size, size, C) (smooth low-frequency fields)."""
    g = small.shape[0]
    pos = np.clip((np.arange(size) + 0.5) * (g / size) - 0.5, 0, g - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, g - 1)
    w = (pos - lo).astype(np.float32)
    rows = small[lo] + (small[hi] - small[lo]) * w[:, None, None]  # (size, g, C)
    return rows[:, lo] + (rows[:, hi] - rows[:, lo]) * w[None, :, None]  # (size, size, C)


def background(rng: np.random.Generator, size: int, kind: str, colors: Array) -> Array:
    """A (size, size, 3) float32 background of ``kind`` mixing ``colors`` (2, 3), plus a faint texture."""
    yy, xx = _coords(size)
    c0, c1 = colors.astype(np.float32)
    theta = rng.uniform(0, np.pi)
    along = (xx * np.cos(theta) + yy * np.sin(theta)) / size  # (size, size) position along a random direction
    if kind == "field":
        mix = _upsample(rng.random((int(rng.integers(3, 8)),) * 2 + (1,)).astype(np.float32), size)[..., 0]
    elif kind == "gradient":
        mix = along - along.min()
        mix /= max(float(mix.max()), 1e-6)
    elif kind == "stripes":
        mix = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 8) * along + rng.uniform(0, 2 * np.pi))
    elif kind == "waves":
        across = (-xx * np.sin(theta) + yy * np.cos(theta)) / size
        mix = 0.5 + 0.5 * np.sin(2 * np.pi * (rng.uniform(3, 7) * along + 0.15 * np.sin(2 * np.pi * 3 * across)))
    elif kind == "grid":
        period = rng.uniform(size / 10, size / 4)
        width = rng.uniform(1.0, 3.0)
        ox, oy = rng.uniform(0, period, 2)
        to_line_x = period / 2 - np.abs(((xx + ox) % period) - period / 2)  # distance to the nearest vertical line
        to_line_y = period / 2 - np.abs(((yy + oy) % period) - period / 2)
        mix = np.clip(width + 0.5 - np.minimum(to_line_x, to_line_y), 0.0, 1.0)
    elif kind == "dots":
        mix = np.zeros((size, size), np.float32)
        for _ in range(int(rng.integers(12, 30))):
            px, py, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.6, 2.5)
            mix = np.maximum(mix, np.clip(r + 0.5 - np.sqrt((xx - px) ** 2 + (yy - py) ** 2), 0.0, 1.0))
    else:  # "plain"
        mix = np.zeros((size, size), np.float32)
    image = c0 + mix.astype(np.float32)[..., None] * (c1 - c0)
    fine = _upsample(rng.random((size // 4, size // 4, 1)).astype(np.float32), size)  # grain, (size, size, 1)
    image += (fine - 0.5) * rng.uniform(0.02, 0.1)
    return image.astype(np.float32)


BACKGROUNDS = ("field", "gradient", "stripes", "waves", "grid", "dots", "plain")


def clutter(rng: np.random.Generator, image: Array, count: int) -> None:
    """Paint ``count`` static rectangles / ellipses of random colours on a background (in place)."""
    size = image.shape[0]
    yy, xx = _coords(size)
    for _ in range(count):
        cx, cy = rng.uniform(0, size, 2)
        hx, hy = rng.uniform(size / 30, size / 8, 2)
        if rng.random() < 0.5:
            dist = np.maximum(np.abs(xx - cx) - hx, np.abs(yy - cy) - hy)
        else:
            dist = (np.sqrt(((xx - cx) / hx) ** 2 + ((yy - cy) / hy) ** 2) - 1.0) * min(hx, hy)
        alpha = np.clip(0.5 - dist, 0.0, 1.0) * rng.uniform(0.5, 1.0)
        image += alpha[..., None] * (rng.random(3).astype(np.float32) - image)


@lru_cache(maxsize=8)
def _coords(size: int) -> tuple[Array, Array]:
    """Pixel-centre coordinates (yy, xx), each (size, size) float32 (cached: read-only)."""
    axis = np.arange(size, dtype=np.float32) + 0.5
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


# --------------------------------------------------------------------------------------------------------------
# Camera, lighting, noise


def camera_path(rng: np.random.Generator, frames: int, pad: int) -> tuple[Array, Array]:
    """Integer camera offsets (T,) in ``[0, 2·pad]``: a smooth random walk (hand-held jitter), sometimes a pan."""
    offsets = []
    for _ in range(2):
        steps = rng.normal(0.0, pad * rng.uniform(0.05, 0.25), frames)
        walk = np.cumsum(steps)
        if rng.random() < 0.3:
            walk += np.linspace(0, rng.uniform(-pad, pad), frames)
        walk -= walk.mean()
        offsets.append(np.clip(np.round(walk + pad), 0, 2 * pad).astype(np.intp))
    return offsets[0], offsets[1]


@lru_cache(maxsize=4)
def _noise_bank(size: int) -> Array:
    """16 frames of Gaussian pixel noise (σ=16, int8), drawn once per size from a fixed seed and then indexed."""
    bank = np.random.default_rng(1234).normal(0.0, 16.0, (16, size, size, 3))
    out = np.clip(np.round(bank), -127, 127).astype(np.int8)
    out.setflags(write=False)
    return out


@dataclass
class Scene:
    """Everything a clip is made of; :func:`render` turns it into (T, S, S, 3) uint8 frames."""

    size: int
    frames: int
    background: Array  # (S + 2·pad, S + 2·pad, 3) float32, world coordinates
    pad: int
    tracks: list[Track] = field(default_factory=list)
    noise: float = 4.0  # pixel noise σ in 0..255 units
    flicker: float = 0.03  # per-frame brightness jitter (relative)


def render(scene: Scene, rng: np.random.Generator, frames: Array | None = None) -> Array:
    """Render a scene: camera crop of the background, objects in order, lighting flicker, noise → uint8 frames.

    ``frames`` (indices into the clip's T frames) renders only those, equal to ``render(scene, rng)[frames]``:
    the camera, flicker and noise are drawn for the whole clip either way. A model that samples 8 of 20 frames
    needs only those (pretraining renders ~16,000 clips this way).
    """
    s, t, pad = scene.size, scene.frames, scene.pad
    cam_x, cam_y = camera_path(rng, t, pad)
    gain = 255.0 * (1.0 + np.cumsum(rng.normal(0.0, scene.flicker / 4, t)).clip(-scene.flicker, scene.flicker))
    bank = _noise_bank(s)
    noise = rng.integers(0, len(bank), t)
    keep = np.arange(t) if frames is None else np.asarray(frames, dtype=np.intp)
    cam_x, cam_y, gain, noise = cam_x[keep], cam_y[keep], gain[keep], noise[keep]
    video = np.stack(
        [scene.background[y : y + s, x : x + s] for x, y in zip(cam_x, cam_y, strict=True)]
    )  # (T_kept, S, S, 3)
    for track in scene.tracks:
        draw(video, track.select(keep), cam_x.astype(np.float32), cam_y.astype(np.float32), reach=_reach(track))
    video *= gain.astype(np.float32)[:, None, None, None]
    video += bank[noise].astype(np.float32) * np.float32(scene.noise / 16.0)
    np.clip(video, 0.0, 255.0, out=video)
    return (video + 0.5).astype(np.uint8)
