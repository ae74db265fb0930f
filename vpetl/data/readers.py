"""Dataset readers (torch-free): one :class:`VideoDataset` from three on-disk layouts.

**folder** (what ``vpetl data synth`` writes, and the simplest way to bring your own clips)::

    root/<class>/<clip>.mp4          one folder per class (any video extension)
    root/classes.txt                 optional: one class name per line, line i = label i
    root/train.txt, root/val.txt     optional split files: "relative/path.mp4 label_index" per line

Split files list paths relative to ``root`` with ``/`` separators, then whitespace and the integer label; the
path may contain spaces (the label is the last field); blank lines and lines starting with ``#`` are skipped.
Without ``classes.txt`` the classes are the sorted class folder names. Split ``"all"`` (or a root without split
files, when no split is named) takes every clip under the class folders.

**HMDB51**: class folders of ``.avi`` clips and ``testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt``
whose lines read ``name.avi 1|2|0`` (1 = train, 2 = test, 0 = unused). Splits ``train``/``test`` (``val`` is an
alias of ``test``) with an optional fold suffix: ``train2``, ``test3`` (default fold 1).

**Something-Something v2**: ``labels.json`` (``{"Putting something on a surface": "120", ...}``),
``train.json`` / ``validation.json`` (lists of ``{"id", "label", "template", "placeholders"}``), and the videos
``<id>.webm`` in ``root``, ``root/videos`` or ``root/20bn-something-something-v2``. The class comes from the
template with ``[something]`` → ``something`` and the brackets removed.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from vpetl.errors import DatasetError

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg"})
HMDB_SPLIT_DIR = "testTrainMulti_7030_splits"

__all__ = [
    "ClipBlob",
    "ClipItem",
    "VideoDataset",
    "VIDEO_EXTENSIONS",
    "detect_layout",
    "open_dataset",
    "read_folder",
    "read_hmdb51",
    "read_ssv2",
    "read_split_file",
    "write_split_file",
]


class ClipBlob(Protocol):
    """A clip that is not a local file (e.g. a clip-store object, :class:`vpetl.store.StoredClip`): its bytes on
    demand; ``str()`` names it in messages."""

    def read_bytes(self) -> bytes: ...


@dataclass(frozen=True)
class ClipItem:
    """One labelled clip: the video (a local file, or a :class:`ClipBlob` read when decoded) and its label index
    into ``VideoDataset.classes``."""

    path: Path | ClipBlob
    label: int

    def source(self) -> str | os.PathLike[str] | bytes:
        """What :func:`vpetl.video.load_clip` takes: the local path (decord reads only the frames it needs), else the
        blob's bytes."""
        return self.path if isinstance(self.path, (str, os.PathLike)) else self.path.read_bytes()


@dataclass
class VideoDataset:
    """Labelled clips of one split: ``items[i]`` is a :class:`ClipItem`, ``classes[label]`` its class name."""

    items: list[ClipItem]
    classes: list[str]
    root: Path = field(default_factory=Path)
    split: str = "all"
    layout: str = "folder"

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> ClipItem:
        return self.items[index]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def counts(self) -> dict[str, int]:
        """Clips per class name (every class listed, zero included)."""
        counts = dict.fromkeys(self.classes, 0)
        for item in self.items:
            counts[self.classes[item.label]] += 1
        return counts

    def validate(self, *, min_classes: int = 1) -> VideoDataset:
        """Raise :class:`DatasetError` unless there are clips, labels in range and ``min_classes`` used classes."""
        where = f"{self.layout} dataset at {self.root} (split {self.split!r})"
        if not self.items:
            raise DatasetError(f"{where} has no clips")
        bad = [item for item in self.items if not 0 <= item.label < len(self.classes)]
        if bad:
            raise DatasetError(f"{where}: label {bad[0].label} of {bad[0].path} is not in 0..{len(self.classes) - 1}")
        used = len({item.label for item in self.items})
        if used < min_classes:
            raise DatasetError(f"{where} has clips of {used} class(es); at least {min_classes} are needed")
        return self


# --------------------------------------------------------------------------------------------------------------
# folder


def read_split_file(path: str | Path) -> list[tuple[str, int]]:
    """Parse a split file into ``(relative path, label)`` pairs (see the module docstring for the format)."""
    pairs = []
    for number, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not re.fullmatch(r"-?\d+", parts[1]):
            raise DatasetError(f"{path}:{number}: expected 'relative/path.mp4 label_index', got {raw!r}")
        pairs.append((parts[0], int(parts[1])))
    return pairs


def write_split_file(path: str | Path, pairs: list[tuple[str, int]]) -> None:
    """Write ``(relative path, label)`` pairs in the split file format."""
    Path(path).write_text("".join(f"{rel} {label}\n" for rel, label in pairs), encoding="utf-8")


def _class_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def _videos_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def _safe_child(root: Path, rel: str, where: str) -> Path:
    """``root / rel`` refusing absolute paths and ``..`` (split files are data, not trusted paths)."""
    candidate = Path(rel)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise DatasetError(f"{where}: path {rel!r} must be relative to the dataset root, without '..'")
    return root / candidate


def read_folder(root: str | Path, split: str | None = None) -> VideoDataset:
    """Read the folder layout; ``split`` names ``<split>.txt`` (``val`` also finds ``validation.txt`` or
    ``test.txt``); ``None`` uses ``all`` clips when there is no split file."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a directory")
    classes_file = root / "classes.txt"
    if classes_file.is_file():
        classes = [c.strip() for c in classes_file.read_text(encoding="utf-8").splitlines() if c.strip()]
    else:
        classes = _class_dirs(root)
    if split is None:
        split = "train" if (root / "train.txt").is_file() else "all"
    if split == "all":
        index = {name: i for i, name in enumerate(classes)}
        items = [ClipItem(video, index[name]) for name in _class_dirs(root) if name in index
                 for video in _videos_in(root / name)]
        return VideoDataset(items, classes, root, split, "folder").validate()
    candidates = {"val": ("val", "validation", "test"), "test": ("test", "val")}.get(split, (split,))
    split_file = next((root / f"{c}.txt" for c in candidates if (root / f"{c}.txt").is_file()), None)
    if split_file is None:
        raise DatasetError(f"{root} has no {split}.txt split file; use split 'all' for every clip")
    pairs = read_split_file(split_file)
    items = [ClipItem(_safe_child(root, rel, str(split_file)), label) for rel, label in pairs]
    if not classes:
        raise DatasetError(f"{root}: no classes.txt and no class folders")
    return VideoDataset(items, classes, root, split, "folder").validate()


# --------------------------------------------------------------------------------------------------------------
# HMDB51


def _split_and_fold(split: str, names: dict[str, str]) -> tuple[str, int]:
    match = re.fullmatch(r"([a-z]+)([123])?", split)
    if not match or match.group(1) not in names:
        raise DatasetError(f"unknown split {split!r}: expected one of {', '.join(names)} (optionally + fold 1-3)")
    return names[match.group(1)], int(match.group(2) or 1)


def read_hmdb51(root: str | Path, split: str = "train", *, fold: int | None = None) -> VideoDataset:
    """Read HMDB51: class folders of clips + the official ``testTrainMulti_7030_splits`` files."""
    root = Path(root)
    split_dir = root / HMDB_SPLIT_DIR
    if not split_dir.is_dir():
        raise DatasetError(f"{root} has no {HMDB_SPLIT_DIR}/ directory (the HMDB51 split files)")
    kind, parsed_fold = _split_and_fold(split, {"train": "train", "test": "test", "val": "test"})
    fold = fold or parsed_fold
    suffix = f"_test_split{fold}.txt"
    files = sorted(p for p in split_dir.iterdir() if p.name.endswith(suffix))
    if not files:
        raise DatasetError(f"{split_dir} has no *{suffix} files")
    classes = [p.name[: -len(suffix)] for p in files]
    video_root = root / "videos" if (root / "videos").is_dir() and not (root / classes[0]).is_dir() else root
    wanted = "1" if kind == "train" else "2"
    items = []
    for label, path in enumerate(files):
        for number, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            parts = raw.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise DatasetError(f"{path}:{number}: expected 'name.avi 0|1|2', got {raw!r}")
            if parts[1] == wanted:
                items.append(ClipItem(_safe_child(video_root / classes[label], parts[0], str(path)), label))
    return VideoDataset(items, classes, root, f"{kind}{fold}", "hmdb51").validate()


# --------------------------------------------------------------------------------------------------------------
# Something-Something v2


def ssv2_label(template: str) -> str:
    """The class name of an SSv2 annotation: ``[something]`` → ``something``, other brackets removed."""
    return template.replace("[something]", "something").replace("[", "").replace("]", "")


def read_ssv2(root: str | Path, split: str = "train") -> VideoDataset:
    """Read Something-Something v2 (``labels.json`` + ``train.json`` / ``validation.json``)."""
    root = Path(root)
    names = {"train": "train", "val": "validation", "validation": "validation"}
    if split not in names:
        raise DatasetError(f"unknown split {split!r} for Something-Something v2: expected train or validation")
    try:
        labels = json.loads((root / "labels.json").read_text(encoding="utf-8"))
        annotations = json.loads((root / f"{names[split]}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{root}: cannot read labels.json / {names[split]}.json: {exc}") from exc
    try:
        index = {name: int(value) for name, value in labels.items()}
    except (TypeError, ValueError, AttributeError) as exc:
        raise DatasetError(f"{root}/labels.json must map class names to index strings") from exc
    classes = [""] * len(index)
    for name, i in index.items():
        if not 0 <= i < len(classes) or classes[i]:
            raise DatasetError(f"{root}/labels.json: indices must be 0..{len(classes) - 1}, each used once")
        classes[i] = name
    video_dir = next((d for d in (root, root / "videos", root / "20bn-something-something-v2")
                      if annotations and (d / f"{annotations[0].get('id')}.webm").is_file()), root)
    items = []
    for entry in annotations:
        try:
            name = ssv2_label(entry["template"])
            video = video_dir / f"{int(entry['id'])}.webm"
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{root}/{names[split]}.json: malformed entry {entry!r}") from exc
        if name not in index:
            raise DatasetError(f"{root}/{names[split]}.json: template {entry['template']!r} is not in labels.json")
        items.append(ClipItem(video, index[name]))
    return VideoDataset(items, classes, root, names[split], "ssv2").validate()


# --------------------------------------------------------------------------------------------------------------


def detect_layout(root: str | Path) -> str:
    """``"ssv2"``, ``"hmdb51"`` or ``"folder"`` from the files present under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a directory")
    if (root / "labels.json").is_file() and ((root / "train.json").is_file() or (root / "validation.json").is_file()):
        return "ssv2"
    if (root / HMDB_SPLIT_DIR).is_dir():
        return "hmdb51"
    return "folder"


def open_dataset(root: str | Path, split: str | None = "train") -> VideoDataset:
    """Read a dataset in whichever layout ``root`` holds (see :func:`detect_layout`).

    ``split``: ``train``, ``val`` (``validation`` / ``test`` aliases per layout), ``all`` (folder layout only), or
    ``None`` for the folder layout's default.
    """
    layout = detect_layout(root)
    if layout == "ssv2":
        return read_ssv2(root, split or "train")
    if layout == "hmdb51":
        return read_hmdb51(root, split or "train")
    return read_folder(root, split)
