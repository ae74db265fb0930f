"""The clip store on its default local folder: validated paths, atomic files, dedup by sha256, counts, listing,
delete. (Other fsspec URLs, S3 included: test_clips_fsspec.py.)"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from vpetl.errors import InvalidRequest, TooLarge
from vpetl.store import ClipStore, is_valid_label
from vpetl.store import keys as k
from vpetl.store.adapters import redis_client


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis_client(redis_url)  # standalone or cluster, whichever redis_url names
    yield client
    client.close()


@pytest.fixture
def clips(tmp_path: Path, redis_url: str) -> Iterator[ClipStore]:
    with ClipStore(tmp_path / "data", redis_url) as store:
        yield store


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def clip_root(store: ClipStore) -> Path:
    return store.data_dir / "clips"  # the default: today's layout under the data directory


def test_add_count_list(clips: ClipStore) -> None:
    wave1 = clips.add_clip("gestures", "wave", "train", b"wave one")
    clips.add_clip("gestures", "wave", "train", b"wave two")
    clips.add_clip("gestures", "clap hands", "train", b"clap one")
    clips.add_clip("gestures", "wave", "val", b"wave val")

    digest = hashlib.sha256(b"wave one").hexdigest()
    assert (wave1.task, wave1.label, wave1.split, wave1.sha256, wave1.size) == ("gestures", "wave", "train", digest, 8)
    assert wave1.path == f"gestures/train/wave/{digest}.mp4" and not wave1.duplicate
    assert (clip_root(clips) / wave1.path).read_bytes() == b"wave one"

    assert clips.counts("gestures") == {"train": {"clap hands": 1, "wave": 2}, "val": {"wave": 1}}
    train = clips.list_clips("gestures", "train")
    assert [clip.label for clip in train] == ["clap hands", "wave", "wave"]
    assert sorted(clip.read_bytes() for clip in train) == [b"clap one", b"wave one", b"wave two"]
    assert all(Path(clip.key).is_absolute() and clip.key.endswith(".mp4") for clip in train)
    assert all(Path(clip.key).is_relative_to(clip_root(clips)) for clip in train)
    assert [clip.label for clip in clips.list_clips("gestures", "val")] == ["wave"]
    assert clips.counts("empty") == {"train": {}, "val": {}}
    assert clips.list_clips("empty", "train") == []
    assert clips.tasks() == ["gestures"]
    assert not [p for p in files_under(clip_root(clips)) if p.name.endswith(".tmp")]


def test_same_bytes_are_deduplicated(clips: ClipStore) -> None:
    first = clips.add_clip("t1", "wave", "train", b"same bytes")
    again = clips.add_clip("t1", "wave", "train", b"same bytes")
    assert again.duplicate and again.model_copy(update={"duplicate": False}) == first
    assert clips.counts("t1") == {"train": {"wave": 1}, "val": {}}

    # the same clip under another label or split is contradictory or a train/val leak: refused, nothing written
    for label, split in (("clap", "train"), ("wave", "val")):
        with pytest.raises(InvalidRequest, match="already stored as label 'wave'"):
            clips.add_clip("t1", label, split, b"same bytes")
    assert len(files_under(clip_root(clips))) == 1
    # another task may hold the same bytes under any label
    assert not clips.add_clip("t2", "clap", "val", b"same bytes").duplicate


@pytest.mark.parametrize(
    ("task", "label", "split"),
    [
        ("t1", "", "train"),
        ("t1", "../escape", "train"),
        ("t1", "a/b", "train"),
        ("t1", ".hidden", "train"),
        ("t1", " lead", "train"),
        ("t1", "wavé", "train"),
        ("t1", "x" * 65, "train"),
        ("t1", "nul\x00", "train"),
        ("t1", 3, "train"),
        ("t1", "wave", "test"),
        ("t1", "wave", "../train"),
        ("../t1", "wave", "train"),
        ("T1", "wave", "train"),
        ("a" * 1000, "wave", "train"),
    ],
)
def test_bad_names_are_refused_and_nothing_is_written(
    clips: ClipStore, raw: redis.Redis, task: str, label: str, split: str
) -> None:
    with pytest.raises(InvalidRequest):
        clips.add_clip(task, label, split, b"data")
    assert files_under(clips.data_dir) == [] and raw.dbsize() == 0


def test_label_rule() -> None:
    assert all(map(is_valid_label, ["wave", "Clap hands", "brush_hair", "a.b-c", "0", "x" * 64]))
    assert not any(map(is_valid_label, ["", "..", "-a", "a/b", "a\\b", "x" * 65, None]))


def test_other_bad_input(clips: ClipStore, tmp_path: Path, redis_url: str) -> None:
    with pytest.raises(InvalidRequest):
        clips.add_clip("t1", "wave", "train", b"")
    with pytest.raises(InvalidRequest):
        clips.list_clips("t1", "everything")
    with pytest.raises(InvalidRequest):
        clips.counts("../t1")
    with ClipStore(tmp_path / "small", redis_url, max_bytes=4) as small, pytest.raises(TooLarge):
        small.add_clip("t1", "wave", "train", b"12345")


def test_failed_write_leaves_no_file_and_no_index(
    clips: ClipStore, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        clips.add_clip("t1", "wave", "train", b"data")
    assert files_under(clip_root(clips)) == [] and raw.dbsize() == 0


def test_delete_task(clips: ClipStore, raw: redis.Redis) -> None:
    clips.add_clip("t1", "wave", "train", b"a")
    clips.add_clip("t1", "clap", "val", b"b")
    kept = clips.add_clip("t2", "wave", "train", b"a")

    assert clips.delete_task("t1") == 2
    assert not (clip_root(clips) / "t1").exists()
    assert not raw.exists(k.clips_key("t1"), k.clip_counts_key("t1"))
    assert clips.counts("t1") == {"train": {}, "val": {}}
    assert clips.tasks() == ["t2"]
    assert (clip_root(clips) / kept.path).read_bytes() == b"a"
    assert clips.delete_task("t1") == 0  # idempotent
