"""vpetl.data.readers on small fixtures in the exact folder, HMDB51 and Something-Something v2 layouts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vpetl.data.readers import (
    ClipItem,
    VideoDataset,
    detect_layout,
    open_dataset,
    read_folder,
    read_split_file,
    ssv2_label,
    write_split_file,
)
from vpetl.errors import DatasetError


def test_folder_layout_with_split_files(tiny_synth: Path) -> None:
    assert detect_layout(tiny_synth) == "folder"
    train = open_dataset(tiny_synth, "train")
    val = open_dataset(tiny_synth, "val")
    assert (train.layout, train.split, len(train), len(val)) == ("folder", "train", 20, 10)
    assert train.classes[:2] == ["moving_left_to_right", "moving_right_to_left"]  # classes.txt order, not sorted
    assert all(item.path.is_file() and item.path.parent.name == train.classes[item.label] for item in train.items)
    assert set(train.counts().values()) == {2} and set(val.counts().values()) == {1}
    everything = open_dataset(tiny_synth, "all")
    assert len(everything) == 30 and everything.classes == train.classes
    assert {i.path for i in everything.items} == {i.path for i in train.items} | {i.path for i in val.items}


def test_folder_layout_without_split_files(tmp_path: Path) -> None:
    for name, count in [("walk", 2), ("run", 3)]:
        (tmp_path / name).mkdir()
        for i in range(count):
            (tmp_path / name / f"clip {i}.mp4").write_bytes(b"x")  # readers never decode
    (tmp_path / "run" / "notes.txt").write_text("not a clip")
    (tmp_path / ".cache").mkdir()
    data = read_folder(tmp_path)  # no split file: every clip
    assert data.split == "all" and data.classes == ["run", "walk"] and data.counts() == {"run": 3, "walk": 2}
    with pytest.raises(DatasetError, match="train.txt"):
        open_dataset(tmp_path, "train")
    write_split_file(tmp_path / "train.txt", [("run/clip 0.mp4", 0), ("walk/clip 1.mp4", 1)])
    train = open_dataset(tmp_path, "train")
    assert [(i.path.name, i.label) for i in train.items] == [("clip 0.mp4", 0), ("clip 1.mp4", 1)]


def test_split_file_format_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text("# comment\n\na/b c.mp4 3\n  x/y.avi\t0  \n")
    assert read_split_file(good) == [("a/b c.mp4", 3), ("x/y.avi", 0)]
    (tmp_path / "a").mkdir()
    for text, match in [("a/clip.mp4\n", "expected"), ("a/clip.mp4 one\n", "expected"), ("../x.mp4 0\n", "'..'"),
                        ("/etc/passwd 0\n", "relative"), ("a/clip.mp4 5\n", "label 5")]:
        (tmp_path / "train.txt").write_text(text)
        with pytest.raises(DatasetError, match=match):
            read_folder(tmp_path, "train")


def _hmdb(root: Path) -> Path:
    """Two HMDB51 classes with the official split file naming and 'name.avi 1|2|0' lines (trailing spaces)."""
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True)
    layout = {
        "brush_hair": ["April_09_brush_hair_u_nm_np1_ba_goo_0.avi",
                       "Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0.avi",
                       "Brushing_Hair_with_Beth_brush_hair_h_nm_np1_le_goo_0.avi"],
        "cartwheel": ["Bodenturnen_2004_cartwheel_f_cm_np1_le_med_0.avi",
                      "Cartwheel_Tutorial_cartwheel_f_cm_np1_ri_med_0.avi",
                      "Cartwheel_at_the_park_cartwheel_f_cm_np1_fr_med_0.avi"],
    }
    for name, clips in layout.items():
        (root / name).mkdir()
        for clip in clips:
            (root / name / clip).write_bytes(b"avi")
        for fold, marks in [(1, "120"), (2, "012"), (3, "211")]:
            lines = "".join(f"{clip} {mark} \n" for clip, mark in zip(clips, marks, strict=True))
            (splits / f"{name}_test_split{fold}.txt").write_text(lines)
    return root


def test_hmdb51_layout(tmp_path: Path) -> None:
    root = _hmdb(tmp_path / "hmdb51")
    assert detect_layout(root) == "hmdb51"
    train = open_dataset(root, "train")
    assert (train.layout, train.split, train.classes) == ("hmdb51", "train1", ["brush_hair", "cartwheel"])
    assert [(i.path.name[:5], i.label) for i in train.items] == [("April", 0), ("Boden", 1)]
    test = open_dataset(root, "test")
    assert [i.path.name[:5] for i in test.items] == ["Blond", "Cartw"] and test.split == "test1"
    assert [i.path for i in open_dataset(root, "val").items] == [i.path for i in test.items]
    fold2 = open_dataset(root, "train2")
    assert [i.path.name[:5] for i in fold2.items] == ["Blond", "Cartw"]
    assert len(open_dataset(root, "test3")) == 2 and all(i.path.is_file() for i in train.items)
    with pytest.raises(DatasetError, match="unknown split"):
        open_dataset(root, "holdout")


def _ssv2(root: Path) -> Path:
    """Something-Something v2 files: labels.json, train.json, validation.json, videos/<id>.webm."""
    root.mkdir()
    labels = {"Putting something on a surface": "0", "Pushing something from left to right": "1",
              "Putting something onto something else": "2"}
    (root / "labels.json").write_text(json.dumps(labels))
    train = [
        {"id": "78687", "label": "putting a pen on a table", "template": "Putting [something] on a surface",
         "placeholders": ["a pen"]},
        {"id": "42326", "label": "pushing a cup from left to right",
         "template": "Pushing [something] from left to right", "placeholders": ["a cup"]},
        {"id": "100904", "label": "putting a book onto a box", "template": "Putting [something] onto [something else]",
         "placeholders": ["a book", "a box"]},
    ]
    val = [{"id": "74225", "label": "pushing a phone from left to right",
            "template": "Pushing [something] from left to right", "placeholders": ["a phone"]}]
    (root / "train.json").write_text(json.dumps(train))
    (root / "validation.json").write_text(json.dumps(val))
    videos = root / "20bn-something-something-v2"
    videos.mkdir()
    for entry in train + val:
        (videos / f"{entry['id']}.webm").write_bytes(b"webm")
    return root


def test_ssv2_layout(tmp_path: Path) -> None:
    root = _ssv2(tmp_path / "ssv2")
    assert detect_layout(root) == "ssv2"
    assert ssv2_label("Putting [something] onto [something else]") == "Putting something onto something else"
    train = open_dataset(root, "train")
    assert train.classes == ["Putting something on a surface", "Pushing something from left to right",
                             "Putting something onto something else"]
    assert [(i.path.name, i.label) for i in train.items] == [("78687.webm", 0), ("42326.webm", 1),
                                                             ("100904.webm", 2)]
    assert all(i.path.is_file() for i in train.items)
    val = open_dataset(root, "val")
    assert (val.split, [(i.path.name, i.label) for i in val.items]) == ("validation", [("74225.webm", 1)])
    data = json.loads((root / "validation.json").read_text())
    data[0]["template"] = "Juggling [something]"
    (root / "validation.json").write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="not in labels.json"):
        open_dataset(root, "validation")


def test_validate_and_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no clips"):
        VideoDataset([], ["a"], tmp_path).validate()
    with pytest.raises(DatasetError, match="at least 2"):
        VideoDataset([ClipItem(tmp_path / "x.mp4", 0)], ["a", "b"], tmp_path).validate(min_classes=2)
    with pytest.raises(DatasetError, match="not a directory"):
        open_dataset(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    (empty / "walk").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no clips"):
        open_dataset(empty, "all")
    shutil.rmtree(empty)
