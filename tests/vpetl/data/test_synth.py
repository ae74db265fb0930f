"""vpetl.data.synth: presets, determinism (decoded frames), the folder layout it writes, and `vpetl data synth`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vpetl import video as V
from vpetl.data import synth
from vpetl.data.readers import read_split_file
from vpetl.errors import DatasetError


def test_presets_describe_their_classes() -> None:
    sizes = {name: len(p.classes) for name, p in synth.PRESETS.items()}
    assert sizes == {"source": 11, "temporal": 10, "order": 6, "appearance": 8}
    # the source domain shares no class with a target task
    targets = {c for name in ("temporal", "order", "appearance") for c in synth.PRESETS[name].classes}
    assert not targets & set(synth.PRESETS["source"].classes)
    for preset in synth.PRESETS.values():
        assert len(set(preset.classes)) == len(preset.classes) == len(preset.class_descriptions)


def test_render_clip_is_deterministic() -> None:
    for preset in synth.PRESETS:
        a = synth.render_clip(preset, 1, 3, seed=5, size=64, frames=(10, 14))
        b = synth.render_clip(preset, 1, 3, seed=5, size=64, frames=(10, 14))
        assert a.dtype == np.uint8 and a.shape[1:] == (64, 64, 3) and 10 <= a.shape[0] <= 14
        assert np.array_equal(a, b)
        assert not np.array_equal(a, synth.render_clip(preset, 1, 3, seed=6, size=64, frames=(10, 14)))
        assert a.std() > 10  # not a blank clip


@pytest.mark.parametrize("scenes", [None, "clean", "busy"])
def test_render_clip_select_equals_those_frames_of_the_whole_clip(scenes: str | None) -> None:
    # pretraining renders only the sampled frames: they must be the pixels of the whole clip's frames, for busy
    # scenes (distractors, clutter, camera pans) as for clean ones
    for preset in synth.PRESETS:
        for label in range(3):
            whole = synth.render_clip(preset, label, 2, seed=4, size=48, frames=(9, 15), scenes=scenes)
            asked: list[int] = []

            def pick(length: int, asked: list[int] = asked) -> np.ndarray:
                asked.append(length)
                return np.array([length - 1, 0, 3, 3])  # any order, repeats allowed

            part = synth.render_clip(preset, label, 2, seed=4, size=48, frames=(9, 15), scenes=scenes, select=pick)
            assert asked == [len(whole)]
            assert np.array_equal(part, whole[[len(whole) - 1, 0, 3, 3]])


@pytest.mark.parametrize(
    ("motion", "check"),
    [
        ("moving_left_to_right", lambda t: t.cx[-1] - t.cx[0] > 20),
        ("moving_right_to_left", lambda t: t.cx[0] - t.cx[-1] > 20),
        ("approaching", lambda t: t.radius[-1] > 1.9 * t.radius[0]),
        ("receding", lambda t: t.radius[0] > 1.9 * t.radius[-1]),
        ("rotating_clockwise", lambda t: t.angle[-1] - t.angle[0] > 2),  # screen y points down: +angle is clockwise
        ("rotating_counterclockwise", lambda t: t.angle[0] - t.angle[-1] > 2),
        ("appearing", lambda t: t.opacity[0] < 0.05 and t.opacity[-1] == 1),
        ("disappearing", lambda t: t.opacity[0] == 1 and t.opacity[-1] < 0.05),
        ("falling", lambda t: t.cy[-1] - t.cy[0] > 40),
        ("rising", lambda t: t.cy[0] - t.cy[-1] > 40),
    ],
)
def test_temporal_motions_mean_what_they_say(motion: str, check) -> None:  # noqa: ANN001
    for seed in range(10):
        rng = np.random.default_rng(seed)
        track = synth._track(rng, 128, 32, "ell", "solid", np.zeros((2, 3)), motion, 16.0)
        assert check(track), (motion, seed)


def _turn(t) -> float:  # noqa: ANN001
    """Total signed turn of the centre around (64, 64), radians; screen y points down, so > 0 is clockwise."""
    phase = np.unwrap(np.arctan2(t.cy - 64.0, t.cx - 64.0))
    return float(phase[-1] - phase[0])


def _jitter(a: np.ndarray) -> float:
    return float(np.abs(np.diff(a, 2)).mean())  # second differences: large for per-frame jitter, ~0 when smooth


@pytest.mark.parametrize(
    ("motion", "check"),
    [
        ("drifting_up", lambda t: t.cy[0] - t.cy[-1] > 30 and abs(t.cx[-1] - t.cx[0]) < 15),
        ("drifting_down", lambda t: t.cy[-1] - t.cy[0] > 30 and abs(t.cx[-1] - t.cx[0]) < 15),
        ("orbiting_clockwise", lambda t: _turn(t) > 2.5),
        ("orbiting_counterclockwise", lambda t: _turn(t) < -2.5),
        ("shaking_then_still", lambda t: _jitter(t.cx[:12]) > 5 * _jitter(t.cx[-12:])),
        ("still_then_shaking", lambda t: _jitter(t.cx[-12:]) > 5 * _jitter(t.cx[:12])),
    ],
)
def test_source_motions_carry_direction_and_order(motion: str, check) -> None:  # noqa: ANN001
    for seed in range(10):
        track = synth._track(np.random.default_rng(seed), 128, 32, "arrow", "solid", np.zeros((2, 3)), motion, 16.0)
        assert check(track), (motion, seed)


@pytest.mark.parametrize("name", sorted(synth.PRESETS["order"].classes))
def test_order_classes_put_the_first_event_first(name: str) -> None:
    first, second = name.split("_then_")

    def activity(t, event: str) -> np.ndarray:  # noqa: ANN001
        """How far each frame is from rest, for one event kind (radius up, opacity down, centre up)."""
        if event == "pulse":
            return t.radius / t.radius.min() - 1
        if event == "blink":
            return 1 - t.opacity
        return (t.cy.max() - t.cy) / 128

    for seed in range(6):
        t = synth._track(np.random.default_rng(seed), 128, 32, "ell", "solid", np.zeros((2, 3)), name, 16.0)
        a, b = activity(t, first), activity(t, second)
        assert a.max() > 0.12 and b.max() > 0.12, seed  # both events happen …
        assert a.argmax() < 16 <= b.argmax(), (seed, a.argmax(), b.argmax())  # … the first in the first half


def test_source_objects_never_appear_in_target_clips() -> None:
    from vpetl.data.render import SOURCE_SHAPES, TARGET_SHAPES

    assert not set(SOURCE_SHAPES) & set(TARGET_SHAPES)
    for preset in synth.PRESETS:
        for label in range(len(synth.PRESETS[preset].classes)):
            for index in range(3):
                rng = np.random.default_rng([0, synth._PRESET_IDS[preset], label, index])
                shapes = {track.shape for track in synth._scene(preset, label, rng, 64, (12, 12)).tracks}
                assert shapes <= set(SOURCE_SHAPES if preset == "source" else TARGET_SHAPES), (preset, shapes)


def test_every_temporal_object_shows_which_way_it_is_turned() -> None:
    """No temporal object looks the same after a symmetric shape's turn (¼, ⅓, ⅕, ½ of a full turn): otherwise a
    turn of more than half that between two sampled frames reads as a turn the other way, and clockwise /
    counter-clockwise clips carry no label in their frames. Drawn with the real renderer, the object at its
    angle vs turned."""
    from vpetl.data.render import Track, draw

    for label in range(len(synth.PRESETS["temporal"].classes)):
        for index in range(12):
            rng = np.random.default_rng([0, synth._PRESET_IDS["temporal"], label, index])
            main = synth._scene("temporal", label, rng, 64, (12, 12), "clean").tracks[-1]
            for turn in (np.pi / 2, 2 * np.pi / 3, 2 * np.pi / 5, np.pi):
                frames = np.full((2, 64, 64, 3), -1.0, np.float32)  # colours are ≥ 0: -1 marks "no object"
                angle = np.array([0.3, 0.3 + turn], np.float32)
                still = np.full(2, 32.0, np.float32)
                track = Track(main.shape, main.texture, main.colors, still, still, np.full(2, 20.0, np.float32),
                              angle, np.ones(2, np.float32), main.freq)
                draw(frames, track, np.zeros(2, np.float32), np.zeros(2, np.float32))
                on = (frames >= 0).all(-1).any(0)  # (64, 64) pixels the object covers at either angle
                change = np.abs(frames[0] - frames[1]).sum(-1)[on]  # colour change per covered pixel
                assert change.mean() > 0.1, (label, index, main.shape, main.texture, turn, change.mean())


def _decode_all(path: Path) -> np.ndarray:
    info = V.decode_info(path)
    return V.read_frames(path, np.arange(info.num_frames))


def test_synthesize_writes_the_folder_layout(tiny_synth: Path) -> None:
    manifest = json.loads((tiny_synth / "dataset.json").read_text())
    classes = (tiny_synth / "classes.txt").read_text().split()
    assert classes == manifest["classes"] == list(synth.PRESETS["temporal"].classes)
    assert manifest["counts"] == {"train": 20, "val": 10, "total": 30}
    assert manifest["preset"] == "temporal" and manifest["seed"] == 7
    train, val = read_split_file(tiny_synth / "train.txt"), read_split_file(tiny_synth / "val.txt")
    assert len(train) == 20 and len(val) == 10
    assert {label for _, label in val} == set(range(10))
    rel, label = val[0]
    assert rel.startswith(f"{classes[label]}/") and (tiny_synth / rel).is_file()
    info = V.decode_info(tiny_synth / rel)
    assert (info.height, info.width) == (64, 64) and 8 <= info.num_frames <= 12


def test_decoded_frames_match_render_and_repeat(tiny_synth: Path, tmp_path: Path) -> None:
    again = synth.synthesize(
        "temporal", tmp_path / "again", clips_per_class=3, seed=7, size=64, frames=(8, 12), workers=2
    )
    for rel, label in read_split_file(tiny_synth / "val.txt")[:4]:
        first, second = _decode_all(tiny_synth / rel), _decode_all(again / rel)
        assert np.array_equal(first, second)  # same seed → identical frames (whatever the worker count)
        rendered = synth.render_clip("temporal", label, 2, seed=7, size=64, frames=(8, 12))
        assert first.shape == rendered.shape

        # yuv420p halves the chroma resolution (saturated stripes suffer) and crf drops the pixel noise, but the
        # 4x4 block means must survive.
        def blocks(v: np.ndarray) -> np.ndarray:
            return v.reshape(v.shape[0], 16, 4, 16, 4, 3).astype(float).mean(axis=(2, 4))  # (T, 16, 16, 3)

        assert np.abs(blocks(first) - blocks(rendered)).mean() < 4


def test_synthesize_reuses_and_protects_directories(tiny_synth: Path, tmp_path: Path) -> None:
    stamp = (tiny_synth / "dataset.json").stat().st_mtime_ns
    assert synth.synthesize("temporal", tiny_synth, clips_per_class=3, seed=7, size=64, frames=(8, 12)) == tiny_synth
    assert (tiny_synth / "dataset.json").stat().st_mtime_ns == stamp  # same parameters: nothing rewritten
    with pytest.raises(DatasetError, match="not empty"):
        synth.synthesize("temporal", tiny_synth, clips_per_class=3, seed=8, size=64, frames=(8, 12))
    for bad in ({"preset": "nope"}, {"size": 63}, {"clips_per_class": 0}, {"val_fraction": 1.0}):
        kwargs = {"preset": "source", "out_dir": tmp_path / "x", "clips_per_class": 1, **bad}
        with pytest.raises(DatasetError):
            synth.synthesize(**kwargs)


def test_cli_synth_json(tmp_path: Path) -> None:
    from server.cli import app

    out = tmp_path / "cli"
    result = CliRunner().invoke(
        app,
        [
            "data",
            "synth",
            "--preset",
            "appearance",
            "--out",
            str(out),
            "--clips-per-class",
            "2",
            "--size",
            "48",
            "--seed",
            "3",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["counts"] == {"train": 8, "val": 8, "total": 16} and manifest["path"] == str(out)
    assert len((out / "train.txt").read_text().splitlines()) == 8
    result = CliRunner().invoke(app, ["data", "synth", "--preset", "nope", "--out", str(tmp_path / "y")])
    assert result.exit_code == 2 and "unknown preset" in result.output


def test_clean_scenes_drop_the_clutter_and_are_their_own_dataset(tmp_path: Path) -> None:
    """``scenes="clean"`` (vpetl up's demo tasks): no clutter or distractors, one larger object; a clean set is
    not mistaken for a busy one of the same parameters (nor the other way round)."""
    from vpetl.data.render import Scene

    captured: list[Scene] = []
    real_render = synth.render

    def spy(scene: Scene, rng: np.random.Generator, frames: np.ndarray | None = None) -> np.ndarray:
        captured.append(scene)
        return real_render(scene, rng, frames)

    try:
        synth.render = spy  # the scene each call builds, before it is drawn
        busy = [synth.render_clip("temporal", 0, i, size=64, frames=(8, 10)) for i in range(12)]
        clean = [synth.render_clip("temporal", 0, i, size=64, frames=(8, 10), scenes="clean") for i in range(12)]
    finally:
        synth.render = real_render
    busy_scenes, clean_scenes = captured[:12], captured[12:]
    assert all(len(s.tracks) == 1 for s in clean_scenes)  # the main object only
    assert any(len(s.tracks) > 1 for s in busy_scenes)  # distractors
    assert max(s.noise for s in clean_scenes) <= 3.0 < max(s.noise for s in busy_scenes)
    assert not np.array_equal(busy[0], clean[0])
    with pytest.raises(ValueError, match="unknown scenes"):
        synth.render_clip("temporal", 0, 0, scenes="spotless")

    out = tmp_path / "demo"
    kwargs = {"clips_per_class": 2, "seed": 1, "size": 48, "frames": (8, 10)}
    synth.synthesize("appearance", out, scenes="clean", **kwargs)
    assert json.loads((out / "dataset.json").read_text())["scenes"] == "clean"
    with pytest.raises(DatasetError, match="not empty"):  # same parameters, other scenes: not a cache hit
        synth.synthesize("appearance", out, **kwargs)
    stamp = (out / "dataset.json").stat().st_mtime_ns
    assert synth.synthesize("appearance", out, scenes="clean", **kwargs) == out
    assert (out / "dataset.json").stat().st_mtime_ns == stamp
    synth.synthesize("appearance", out, overwrite=True, **kwargs)
    assert json.loads((out / "dataset.json").read_text())["scenes"] == "busy"
