"""Synthetic action datasets written as real mp4 files (torch-free).

Four presets (see :data:`PRESETS` and the README's "Synthetic datasets" section):

- ``source``: the pretraining domain of the demo backbone, 11 classes = 11 kinds of motion (drifting up / down,
  spinning, pulsing, bouncing, orbiting clockwise / counter-clockwise, blinking, shaking then still / still then
  shaking, resting) of source-only shapes (:data:`vpetl.data.render.SOURCE_SHAPES`, never drawn in a target clip)
  with any texture and colour, in clean scenes (one object, a smooth background, little noise: see
  :data:`_NUISANCE`); the mirror pairs carry the arrow of time and event order;
- ``temporal`` (Something-Something-like): 10 classes that differ only in *how* the object moves (left→right vs
  right→left, approaching vs receding, clockwise vs counter-clockwise, appearing vs disappearing, falling vs
  rising); every class draws its appearance from the same distribution, and each class's mirror is the same
  motion played backwards, so no single frame tells them apart; every object has one orientation (an asymmetric
  shape, or a one-sided shading), so which way it turns is always in the frames;
- ``order``: 6 classes = ordered pairs of two time-symmetric events (pulse, blink, hop): "A then B" vs "B then A"
  is the same clip played backwards, so only the relation of the two events in time tells them apart;
- ``appearance`` (HMDB-like): 8 classes that differ in *what* is seen (object kind, texture, background) while the
  motion is random and class-independent.

Every ``temporal`` and ``appearance`` clip has nuisance: background clutter, a faint texture, pixel noise, lighting
flicker, a hand-held camera, distractor objects, random speed, size, colours and clip length (24–48 frames), so
accuracy is not trivially 100%. ``source`` clips keep the camera, the random appearance and the speed profiles but
drop clutter and distractors: that is what lets a 1M-parameter ViT learn them from scratch in a few minutes.

Output (the "folder" layout of :mod:`vpetl.data.readers`): ``<out>/<class>/<class>_<i>.mp4``, ``train.txt`` and
``val.txt`` (``relative/path.mp4 label_index`` per line), ``classes.txt`` (one name per line, line i = label i) and
``dataset.json`` (a manifest: preset, seed, classes, counts; written last, so its presence marks a complete set).

Generation is deterministic: clip ``(class c, index i)`` draws from ``default_rng([seed, preset, c, i])``, so the
same seed gives byte-identical frames whatever the number of worker processes.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vpetl.data.render import (
    ASYMMETRIC_SHAPES,
    BACKGROUNDS,
    ORIENTED_SHAPES,
    SOURCE_ASYMMETRIC,
    SOURCE_SHAPES,
    TARGET_SHAPES,
    TEXTURES,
    Scene,
    Track,
    background,
    clutter,
    render,
)
from vpetl.errors import DatasetError

SYNTH_VERSION = 4  # bump on any change to what a (preset, seed, index) renders: dataset manifests and the demo
# backbone's pretraining cache key (training/pretrain.py) include it, so stale caches are rebuilt (4: every
# temporal object has one orientation)
FPS = 15
DEFAULT_FRAMES = (24, 48)

__all__ = [
    "PRESETS",
    "SCENES",
    "Preset",
    "render_clip",
    "synthesize",
    "write_mp4",
    "default_scenes",
    "DEFAULT_FRAMES",
    "SYNTH_VERSION",
]


@dataclass(frozen=True)
class Preset:
    """A synthetic dataset recipe: its classes (label i = ``classes[i]``) and what tells them apart."""

    name: str
    description: str
    classes: tuple[str, ...]
    class_descriptions: tuple[str, ...]


# source classes are motion kinds (any object, any appearance): a 2M-parameter ViT learns them from scratch in
# minutes, while shape × motion classes under random textures and colours need far more clips than that budget
# Version 3 adds the arrow of time: mirror pairs that differ only in direction (drifting up / down, orbiting
# clockwise / counter-clockwise) and in event order (shaking then still / still then shaking). None of them is a
# target class: the targets move left/right, grow/shrink, turn in place, fade, fall/rise, or order pulse/blink/hop.
_SOURCE_MOTIONS = {
    "drifting_up": "any object drifts straight upwards",
    "drifting_down": "any object drifts straight downwards",
    "spinning": "any object rotates in place, either way",
    "pulsing": "any object grows and shrinks periodically",
    "bouncing": "any object hops up and down",
    "orbiting_clockwise": "any object travels clockwise around a circle",
    "orbiting_counterclockwise": "any object travels counter-clockwise around a circle",
    "blinking": "any object fades out and back in",
    "shaking_then_still": "any object jitters, then stops",
    "still_then_shaking": "any object stays still, then starts to jitter",
    "resting": "any object stays where it is (only the camera shakes)",
}
_TEMPORAL = {
    "moving_left_to_right": "the object travels from left to right",
    "moving_right_to_left": "the object travels from right to left",
    "approaching": "the object grows (comes closer)",
    "receding": "the object shrinks (moves away)",
    "rotating_clockwise": "the object turns clockwise",
    "rotating_counterclockwise": "the object turns counter-clockwise",
    "appearing": "the object fades in",
    "disappearing": "the object fades out",
    "falling": "the object falls, accelerating downwards",
    "rising": "the object is thrown upwards, slowing down",
}
# order classes: two events, each symmetric in time (so a clip played backwards is the other order of the same
# two events, and neither event alone tells the classes apart): what differs is which one comes first
_EVENTS = {"pulse": "grows and shrinks once", "blink": "fades out and back in", "hop": "hops up once"}
_ORDER = {f"{a}_then_{b}": f"the object {_EVENTS[a]}, then {_EVENTS[b]}" for a in _EVENTS for b in _EVENTS if a != b}
# appearance classes: (object shape, preferred texture, background kind, background palette (2 RGB colours))
_APPEARANCE: dict[str, tuple[str, str, str, tuple[tuple[float, ...], tuple[float, ...]]]] = {
    "ball_on_grass": ("disc", "solid", "field", ((0.15, 0.45, 0.1), (0.35, 0.65, 0.2))),
    "box_in_warehouse": ("square", "checker", "grid", ((0.45, 0.4, 0.35), (0.25, 0.22, 0.2))),
    "kite_in_sky": ("diamond", "stripes", "gradient", ((0.45, 0.65, 0.95), (0.9, 0.95, 1.0))),
    "star_at_night": ("star", "solid", "dots", ((0.03, 0.04, 0.15), (0.9, 0.9, 0.7))),
    "ring_on_water": ("ring", "gradient", "waves", ((0.1, 0.35, 0.55), (0.2, 0.55, 0.7))),
    "cross_on_road": ("cross", "solid", "stripes", ((0.3, 0.3, 0.32), (0.5, 0.5, 0.5))),
    "triangle_on_sand": ("triangle", "rings", "field", ((0.8, 0.7, 0.45), (0.65, 0.55, 0.35))),
    "pacman_in_maze": ("pacman", "solid", "grid", ((0.02, 0.02, 0.1), (0.15, 0.2, 0.8))),
}

PRESETS: dict[str, Preset] = {
    "source": Preset(
        "source",
        "broad pretraining domain: 11 kinds of motion (direction and order included) of source-only "
        "objects, in clean scenes",
        tuple(_SOURCE_MOTIONS),
        tuple(_SOURCE_MOTIONS.values()),
    ),
    "temporal": Preset(
        "temporal",
        "Something-Something-like: classes differ only in how the object moves",
        tuple(_TEMPORAL),
        tuple(_TEMPORAL.values()),
    ),
    "order": Preset(
        "order",
        "event order: classes differ only in which of two time-symmetric events comes first",
        tuple(_ORDER),
        tuple(_ORDER.values()),
    ),
    "appearance": Preset(
        "appearance",
        "HMDB-like: classes differ in what is seen (object, texture, background); motion is random",
        tuple(_APPEARANCE),
        tuple(f"a {v[1]} {v[0]} on a {v[2]} background" for v in _APPEARANCE.values()),
    ),
}
_PRESET_IDS = {"source": 1, "temporal": 2, "appearance": 3, "order": 4}


# --------------------------------------------------------------------------------------------------------------
# Motion


def _const(t: int, value: float) -> np.ndarray:
    return np.full(t, value, dtype=np.float64)


def _track(
    rng: np.random.Generator,
    size: int,
    t: int,
    shape: str,
    texture: str,
    colors: np.ndarray,
    motion: str,
    radius: float,
) -> Track:
    """A track of ``motion`` kind. Mirror motions are the same random draw played backwards."""
    mirrors = {
        "moving_right_to_left": "moving_left_to_right",
        "receding": "approaching",
        "rotating_counterclockwise": "rotating_clockwise",
        "disappearing": "appearing",
        "rising": "falling",
        "drifting_down": "drifting_up",
        "orbiting_counterclockwise": "orbiting_clockwise",
        "still_then_shaking": "shaking_then_still",
        **{f"{b}_then_{a}": f"{a}_then_{b}" for a in _EVENTS for b in _EVENTS if a < b},
    }
    if motion in mirrors:
        return _track(rng, size, t, shape, texture, colors, mirrors[motion], radius).reversed()
    tau = np.linspace(0.0, 1.0, t)
    prog = tau ** rng.uniform(0.6, 1.6)  # varying speed profile: accelerating or decelerating
    s = float(size)
    # a small drift and wobble for every motion (nobody holds an object perfectly still)
    drift = rng.uniform(-0.06, 0.06, 2) * s
    wobble = rng.uniform(0, 0.015 * s) * np.sin(2 * np.pi * rng.uniform(0.5, 2) * tau + rng.uniform(0, 6.3))
    cx = rng.uniform(0.3, 0.7) * s + drift[0] * (tau - 0.5) + wobble
    cy = rng.uniform(0.3, 0.7) * s + drift[1] * (tau - 0.5) + wobble[::-1]
    rad = _const(t, radius)
    angle = _const(t, rng.uniform(0, 2 * np.pi))
    opacity = _const(t, 1.0)
    if motion == "moving_left_to_right":
        travel = rng.uniform(0.4, 0.75) * s
        cx = rng.uniform(0.4, 0.6) * s + (prog - 0.5) * travel
        cy = rng.uniform(0.25, 0.75) * s + wobble
    elif motion == "approaching":
        start = rng.uniform(0.05, 0.1) * s
        rad = start * rng.uniform(2.0, 3.2) ** prog
    elif motion in ("rotating_clockwise", "spinning"):
        # at most a full turn: 8 sampled frames of a faster spin alias (a square turned by 90° looks unturned)
        turn = rng.uniform(0.75, 2.0) * np.pi if motion == "rotating_clockwise" else rng.uniform(0.6, 1.2) * np.pi
        angle = angle + turn * prog * (1 if motion == "rotating_clockwise" else rng.choice([-1, 1]))
    elif motion == "appearing":
        a = rng.uniform(0.0, 0.35)
        b = rng.uniform(a + 0.3, 1.0)
        opacity = np.clip((tau - a) / (b - a), 0.0, 1.0)
    elif motion == "drifting_up":
        travel = rng.uniform(0.35, 0.6) * s
        cx = rng.uniform(0.25, 0.75) * s + wobble
        cy = rng.uniform(0.4, 0.6) * s - (prog - 0.5) * travel  # screen y points down
    elif motion == "orbiting_clockwise":
        orbit = rng.uniform(0.15, 0.25) * s
        phase = rng.uniform(0, 2 * np.pi) + rng.uniform(1.0, 1.75) * np.pi * prog  # +phase is clockwise on screen
        cx = 0.5 * s + orbit * np.cos(phase) + wobble
        cy = 0.5 * s + orbit * np.sin(phase) + wobble[::-1]
    elif motion == "shaking_then_still":
        # per-frame jitter of the object (not the camera) until a random moment, then nothing
        shaking = tau < rng.uniform(0.4, 0.6)
        jitter = rng.normal(0.0, rng.uniform(0.03, 0.05) * s, (2, t)) * shaking
        cx, cy = cx + jitter[0], cy + jitter[1]
        angle = angle + rng.normal(0.0, 0.3, t) * shaking
    elif motion in _ORDER:
        first, second = motion.split("_then_")
        cut = rng.uniform(0.45, 0.55)
        windows = (
            (rng.uniform(0.0, 0.08), cut - rng.uniform(0.0, 0.05)),
            (cut + rng.uniform(0.0, 0.05), rng.uniform(0.92, 1.0)),
        )
        for event, (lo, hi) in zip((first, second), windows, strict=True):
            x = np.clip((tau - lo) / (hi - lo), 0.0, 1.0)  # 0 → 1 across the event's window
            bump = np.sin(np.pi * x)  # 0 outside, 1 at the window's middle: symmetric in time
            if event == "pulse":
                rad = rad * (1 + rng.uniform(0.5, 0.8) * bump)
            elif event == "blink":
                opacity = opacity * (1 - rng.uniform(0.85, 1.0) * bump)
            else:  # hop
                cy = cy - rng.uniform(0.15, 0.25) * s * bump
    elif motion == "falling":
        cy = rng.uniform(0.1, 0.3) * s + rng.uniform(0.45, 0.65) * s * tau**2
    elif motion == "sliding":
        phi = rng.uniform(0, 2 * np.pi)
        travel = rng.uniform(0.35, 0.6) * s
        cx = cx + (prog - 0.5) * travel * np.cos(phi)
        cy = cy + (prog - 0.5) * travel * np.sin(phi)
    # periodic motions stay at 0.75–2 cycles per clip: a model sees 8 frames of it (4 tubelets), faster ones alias
    elif motion == "pulsing":
        rad = radius * (
            1 + rng.uniform(0.3, 0.5) * np.sin(2 * np.pi * rng.uniform(0.75, 1.25) * tau + rng.uniform(0, 2 * np.pi))
        )
    elif motion == "bouncing":
        hops = rng.uniform(1.0, 2.0)
        cy = rng.uniform(0.6, 0.8) * s - rng.uniform(0.2, 0.4) * s * np.abs(np.sin(np.pi * hops * tau))
    elif motion == "blinking":
        mid, width = rng.uniform(0.35, 0.65), rng.uniform(0.15, 0.3)
        opacity = np.clip(np.abs(tau - mid) / width, 0.0, 1.0)
    elif motion == "wandering":
        steps = rng.normal(0, rng.uniform(0.005, 0.02) * s, (2, t))
        cx = cx + np.cumsum(steps[0])
        cy = cy + np.cumsum(steps[1])
        angle = angle + np.cumsum(rng.normal(0, 0.05, t))
    elif motion not in ("static", "resting"):
        raise ValueError(f"unknown motion {motion!r}")
    return Track(
        shape,
        texture,
        colors,
        cx.astype(np.float32),
        cy.astype(np.float32),
        rad.astype(np.float32),
        angle.astype(np.float32),
        opacity.astype(np.float32),
        freq=float(rng.uniform(1.5, 4.0)),
    )


def _object_colors(rng: np.random.Generator, avoid: np.ndarray, two_tone: bool = False) -> np.ndarray:
    """Two object colours; the first keeps some contrast with the background's mean colour ``avoid``, and with
    ``two_tone`` the two differ visibly too (a shading that must show the object's orientation)."""
    for _ in range(8 if two_tone else 4):
        colors = rng.random((2, 3))
        if np.abs(colors[0] - avoid).sum() > 0.45 and (not two_tone or np.abs(colors[1] - colors[0]).sum() > 0.6):
            break
    return colors


def _palette(rng: np.random.Generator, base: tuple[tuple[float, ...], tuple[float, ...]] | None) -> np.ndarray:
    colors = rng.random((2, 3)) if base is None else np.asarray(base) + rng.uniform(-0.12, 0.12, (2, 3))
    return np.clip(colors, 0.0, 1.0)


def _distractors(rng: np.random.Generator, size: int, t: int, count: int, bg_mean: np.ndarray) -> list[Track]:
    shapes = TARGET_SHAPES  # source shapes never appear in a target clip
    return [
        _track(
            rng,
            size,
            t,
            str(rng.choice(shapes)),
            str(rng.choice(tuple(TEXTURES))),
            _object_colors(rng, bg_mean),
            "wandering",
            rng.uniform(0.035, 0.08) * size,
        )
        for _ in range(count)
    ]


@dataclass(frozen=True)
class Nuisance:
    """How cluttered a preset's clips are (everything here is class-independent)."""

    backgrounds: tuple[str, ...]  # background kinds drawn from
    clutter: int  # static clutter shapes: 0..clutter
    distractors: int  # wandering distractor objects: 0..distractors
    radius: tuple[float, float]  # main object radius, as a fraction of the frame side
    noise: tuple[float, float]  # pixel noise sigma (0..255 units)
    flicker: tuple[float, float]  # lighting flicker (relative)


_NUISANCE = {
    # the target tasks: busy scenes, where the object is one of several things in view
    "busy": Nuisance(BACKGROUNDS, 4, 2, (0.09, 0.17), (2.0, 7.0), (0.01, 0.05)),
    # the pretraining domain: one larger object on a smooth background, so a small ViT learns shape and motion
    # from scratch in minutes (the busy version stays at chance for a 2M-parameter ViT in that budget)
    "clean": Nuisance(("plain", "gradient", "field"), 0, 0, (0.14, 0.22), (1.0, 3.0), (0.0, 0.02)),
}
_PRESET_NUISANCE = {"source": "clean", "temporal": "busy", "order": "busy", "appearance": "busy"}
#: The scene kinds a caller may ask for instead of a preset's own (``synthesize(..., scenes="clean")``): ``vpetl
#: up``'s demo tasks are the clean-scene versions of ``temporal`` and ``appearance`` (one object, a smooth
#: background), which the 1M-parameter demo backbone can learn in its first-run budget; ``vpetl experiment``
#: keeps the busy ones.
SCENES = tuple(_NUISANCE)


def default_scenes(preset: str) -> str:
    """The scene kind a preset renders unless told otherwise."""
    return _PRESET_NUISANCE.get(preset, "busy")


def _scene(
    preset: str, label: int, rng: np.random.Generator, size: int, frames: tuple[int, int], scenes: str | None = None
) -> Scene:
    """The random scene of one clip of class ``label`` (all class-specific choices live here)."""
    t = int(rng.integers(frames[0], frames[1] + 1))
    pad = max(size // 16, 2)
    world = size + 2 * pad
    nuisance = _NUISANCE[scenes or default_scenes(preset)]
    kind, palette = str(rng.choice(nuisance.backgrounds)), None
    texture = str(rng.choice(tuple(TEXTURES)))
    radius = rng.uniform(*nuisance.radius) * size
    two_tone = False
    if preset == "source":
        motion = PRESETS["source"].classes[label]
        # a turning hexagon or bar can look unturned: spin only shapes whose turn is always visible
        shape = str(rng.choice(SOURCE_ASYMMETRIC if motion == "spinning" else tuple(SOURCE_SHAPES)))
    elif preset in ("temporal", "order"):
        shape, motion = str(rng.choice(ASYMMETRIC_SHAPES + ("diamond",))), PRESETS[preset].classes[label]
        if preset == "temporal" and shape not in ORIENTED_SHAPES:
            # a checkered square turning 45° between two sampled frames could be turning either way (many
            # rotating_* clips could: their label was not in the frames), so a one-sided shading gives every
            # object one orientation; every class alike, so appearance still tells no class apart
            texture, two_tone = "gradient", True
    elif preset == "appearance":
        shape, pref_texture, pref_kind, base = _APPEARANCE[PRESETS["appearance"].classes[label]]
        motion = str(rng.choice(("sliding", "spinning", "pulsing", "bouncing", "wandering", "static")))
        # Busy scenes: mostly the class's look, sometimes another (the object kind is the only fully reliable cue).
        # Clean scenes: always the class's look, as they drop every other nuisance.
        busy = nuisance is _NUISANCE["busy"]
        texture = pref_texture if rng.random() < (0.7 if busy else 1.0) else texture
        if rng.random() < (0.75 if busy else 1.0):
            kind, palette = pref_kind, base
    else:
        raise ValueError(f"unknown preset {preset!r}: choose from {', '.join(PRESETS)}")
    bg = background(rng, world, kind, _palette(rng, palette))
    clutter(rng, bg, int(rng.integers(0, nuisance.clutter + 1)))
    bg_mean = bg.mean(axis=(0, 1))
    # world coordinates include the camera margin: shift the (screen-space) tracks by pad
    tracks = _distractors(rng, size, t, int(rng.integers(0, nuisance.distractors + 1)), bg_mean)
    main = _track(rng, size, t, shape, texture, _object_colors(rng, bg_mean, two_tone), motion, radius)
    for track in (*tracks, main):
        track.cx += pad
        track.cy += pad
    # distractors behind the main object most of the time, in front of it sometimes (occlusion)
    order = [*tracks, main] if rng.random() < 0.8 else [main, *tracks]
    return Scene(
        size=size,
        frames=t,
        background=bg,
        pad=pad,
        tracks=order,
        noise=float(rng.uniform(*nuisance.noise)),
        flicker=float(rng.uniform(*nuisance.flicker)),
    )


def render_clip(
    preset: str,
    label: int,
    index: int,
    *,
    seed: int = 0,
    size: int = 128,
    frames: tuple[int, int] = DEFAULT_FRAMES,
    scenes: str | None = None,
    select: Callable[[int], np.ndarray] | None = None,
) -> np.ndarray:
    """Frames (T, size, size, 3) uint8 RGB of clip ``index`` of class ``label`` (deterministic in all arguments).

    ``scenes`` (one of :data:`SCENES`) replaces the preset's own scene kind; the class content is the same draw.
    ``select(T)`` (given the clip's length T) returns the frame indices to render: the result is then those
    frames of the same clip, (len(indices), size, size, 3), at a fraction of the cost.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose from {', '.join(PRESETS)}")
    if scenes is not None and scenes not in _NUISANCE:
        raise ValueError(f"unknown scenes {scenes!r}: choose from {', '.join(SCENES)}")
    rng = np.random.default_rng([seed, _PRESET_IDS[preset], label, index])
    scene = _scene(preset, label, rng, size, frames, scenes)
    return render(scene, rng, None if select is None else select(scene.frames))


# --------------------------------------------------------------------------------------------------------------
# Writing


def _codec() -> str:
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_mp4(path: str | Path, frames: np.ndarray, *, fps: int = FPS, codec: str | None = None) -> str:
    """Encode (T, H, W, 3) uint8 RGB frames (even H and W) as mp4 with PyAV; returns the codec used.

    libx264 (ultrafast, crf 20) when available, else mpeg4 (qscale 2); yuv420p; one encoder thread, so files are
    reproducible and two writer processes do not oversubscribe the cores.
    """
    import av

    codec = codec or _codec()
    options = {"preset": "ultrafast", "crf": "20", "threads": "1"} if codec == "libx264" else {"qscale": "2"}
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    return codec


def _make_clip(
    job: tuple[str, int, int, int, int, tuple[int, int], str, str, str | None],
) -> tuple[int, int, str, int]:
    """Worker: render and write one clip; returns (label, index, relative path, frame count)."""
    preset, label, index, seed, size, frames, out_dir, codec, scenes = job
    name = PRESETS[preset].classes[label]
    rel = f"{name}/{name}_{index:04d}.mp4"
    video = render_clip(preset, label, index, seed=seed, size=size, frames=frames, scenes=scenes)
    target = Path(out_dir) / rel
    partial = target.with_name(target.name + ".part")
    write_mp4(partial, video, codec=codec)
    os.replace(partial, target)  # a crash never leaves a half-written clip under the final name
    return label, index, rel, int(video.shape[0])


def _split_counts(clips_per_class: int, val_fraction: float) -> int:
    """Validation clips per class: at least one when a fraction is asked and there are two clips or more."""
    if val_fraction <= 0 or clips_per_class < 2:
        return 0
    return min(max(int(round(clips_per_class * val_fraction)), 1), clips_per_class - 1)


def _manifest_matches(out: Path, wanted: dict[str, Any], defaults: dict[str, Any]) -> bool:
    """``out`` holds a complete dataset with every ``wanted`` value; ``defaults`` stands in for keys a manifest
    written before they existed lacks (``scenes``: the preset's own)."""
    try:
        manifest = json.loads((out / "dataset.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or any(manifest.get(k, defaults.get(k)) != v for k, v in wanted.items()):
        return False
    return all((out / f"{split}.txt").is_file() for split in ("train", "val"))


def synthesize(
    preset: str,
    out_dir: str | Path,
    clips_per_class: int = 40,
    seed: int = 0,
    size: int = 128,
    *,
    val_fraction: float = 0.2,
    frames: tuple[int, int] = DEFAULT_FRAMES,
    workers: int | None = None,
    overwrite: bool = False,
    scenes: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a synthetic dataset of ``preset`` under ``out_dir`` and return that directory.

    A directory already holding the same dataset (same manifest parameters, split files present) is returned as
    is (a cache for ``vpetl up``). A non-empty directory holding something else is refused unless ``overwrite``.
    ``progress(done, total)`` is called after every clip; ``workers`` processes render in parallel (default: up to
    2, one when there are few clips). ``scenes`` (:data:`SCENES`) replaces the preset's own scene kind (busy for
    the target presets, clean for ``source``).
    """
    if preset not in PRESETS:
        raise DatasetError(f"unknown preset {preset!r}: choose from {', '.join(PRESETS)}")
    if clips_per_class < 1:
        raise DatasetError("clips_per_class must be at least 1")
    if size < 32 or size % 2:
        raise DatasetError("size must be an even number >= 32 (yuv420p video needs even sides)")
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError("val_fraction must be in [0, 1)")
    if not 2 <= frames[0] <= frames[1]:
        raise DatasetError("frames must be a range (min, max) with 2 <= min <= max")
    if scenes is not None and scenes not in _NUISANCE:
        raise DatasetError(f"unknown scenes {scenes!r}: choose from {', '.join(SCENES)}")
    spec = PRESETS[preset]
    out = Path(out_dir)
    wanted = {
        "version": SYNTH_VERSION,
        "preset": preset,
        "seed": seed,
        "size": size,
        "clips_per_class": clips_per_class,
        "val_fraction": val_fraction,
        "frames": list(frames),
        "classes": list(spec.classes),
        "scenes": scenes or default_scenes(preset),
    }
    if _manifest_matches(out, wanted, {"scenes": default_scenes(preset)}):
        return out
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DatasetError(f"{out} is not empty: choose another directory or pass overwrite (--overwrite)")
    for name in spec.classes:
        (out / name).mkdir(parents=True, exist_ok=True)
    (out / "dataset.json").unlink(missing_ok=True)  # incomplete until rewritten at the end

    codec = _codec()
    jobs = [
        (preset, label, i, seed, size, tuple(frames), str(out), codec, scenes)
        for label in range(len(spec.classes))
        for i in range(clips_per_class)
    ]
    total = len(jobs)
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    results: list[tuple[int, int, str, int]] = []
    if workers <= 1 or total < 8:
        for job in jobs:
            results.append(_make_clip(job))
            if progress:
                progress(len(results), total)
    else:
        # fork: children only run numpy + PyAV, and start in milliseconds (spawn would re-import everything)
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(workers) as pool:
            for result in pool.imap_unordered(_make_clip, jobs, chunksize=4):
                results.append(result)
                if progress:
                    progress(len(results), total)
    results.sort()

    n_val = _split_counts(clips_per_class, val_fraction)
    splits: dict[str, list[str]] = {"train": [], "val": []}
    class_counts: dict[str, dict[str, int]] = {name: {"train": 0, "val": 0} for name in spec.classes}
    for label, index, rel, _ in results:
        split = "val" if index >= clips_per_class - n_val else "train"  # clips are i.i.d.: the last ones validate
        splits[split].append(f"{rel} {label}")
        class_counts[spec.classes[label]][split] += 1
    for split, lines in splits.items():
        (out / f"{split}.txt").write_text("".join(line + "\n" for line in lines))
    (out / "classes.txt").write_text("".join(name + "\n" for name in spec.classes))
    lengths = [n for *_, n in results]
    manifest = {
        **wanted,
        "format": "vpetl-folder/1",
        "generator": "vpetl.data.synth",
        "description": spec.description,
        "class_descriptions": dict(zip(spec.classes, spec.class_descriptions, strict=True)),
        "codec": codec,
        "fps": FPS,
        "counts": {"train": len(splits["train"]), "val": len(splits["val"]), "total": total},
        "class_counts": class_counts,
        "frames_per_clip": {"min": min(lengths), "max": max(lengths), "mean": round(float(np.mean(lengths)), 2)},
    }
    (out / "dataset.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out
