"""Clip uploads: files under ``<data_dir>/clips/<task>/<split>/<label>/<sha256>.mp4``, index and counts in Redis.

Every path component is validated (task name, split from a fixed list, label by :data:`LABEL_RE`, a sha256 the
store computed), and the final path is checked to lie under the clips root, so user input never becomes a path
unchecked. A clip is identified by its sha256 within a task: uploading the same bytes again with the same label and
split is a no-op that returns the stored record, and with a different label or split it is refused (the same clip
in train and val would leak, and in two classes it would be contradictory).

Files are written atomically (temp file + ``os.replace``) *before* the index entry, so the index never names a
missing file. The store is blocking; the server calls it from a thread.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import redis
from pydantic import BaseModel, ConfigDict, Field

from vpetl.artifact import atomic_write
from vpetl.errors import InvalidRequest, TooLarge
from vpetl.store import keys as k
from vpetl.store._scripts import ADD_CLIP, DELETE_CLIPS
from vpetl.store.adapters import redis_client

SPLITS = ("train", "val")
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")
CLIP_SUFFIX = ".mp4"

Split = Literal["train", "val"]


def is_valid_label(label: object) -> bool:
    """Labels become directory names: ASCII letters, digits, space, ``_.-``, starting alphanumeric, ≤ 64 chars."""
    return isinstance(label, str) and bool(LABEL_RE.fullmatch(label))


def _check_label(label: object) -> str:
    if not isinstance(label, str) or not LABEL_RE.fullmatch(label):
        raise InvalidRequest(f"invalid label {repr(label)[:80]}: expected ^[A-Za-z0-9][A-Za-z0-9 _.-]{{0,63}}$")
    return label


def _check_split(split: object) -> str:
    if not isinstance(split, str) or split not in SPLITS:
        raise InvalidRequest(f"invalid split {repr(split)[:40]}: expected one of {', '.join(SPLITS)}")
    return split


class ClipRecord(BaseModel):
    """One stored clip. ``path`` is relative to the data directory (never an absolute server path)."""

    model_config = ConfigDict(frozen=True)

    task: str
    label: str
    split: Split
    sha256: str
    size: int = Field(..., ge=1)
    path: str
    created_at: datetime
    duplicate: bool = Field(False, description="true when these bytes were already stored (nothing was written)")


class ClipStore:
    """Blocking clip store.

    Args:
        data_dir: the data directory; clips go under ``data_dir/clips``.
        client: a Redis URL (the store then owns its client) or a ``redis.Redis`` to share.
        max_bytes: refuse clips larger than this (:class:`~vpetl.errors.TooLarge`); ``None`` for no limit.
    """

    def __init__(self, data_dir: str | os.PathLike[str], client: str | redis.Redis, max_bytes: int | None = None):
        self.data_dir = Path(data_dir).resolve()
        self.root = self.data_dir / "clips"
        self.max_bytes = max_bytes
        self._owns_client = isinstance(client, str)
        self.redis: redis.Redis = redis_client(client) if isinstance(client, str) else client
        self._add = self.redis.register_script(ADD_CLIP)
        self._delete = self.redis.register_script(DELETE_CLIPS)

    def clip_path(self, task: str, split: str, label: str, sha256: str) -> Path:
        """Where a clip lives; every component validated, and the result checked to stay under the clips root."""
        path = self.root / k.check_task(task) / _check_split(split) / _check_label(label) / k.check_sha256(sha256)
        path = path.with_suffix(CLIP_SUFFIX)
        # defence in depth: the regexes already exclude separators and "..", a symlink could still escape
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise InvalidRequest("clip path escapes the clip directory")
        return path

    def add_clip(self, task: str, label: str, split: str, data: bytes) -> ClipRecord:
        """Store one labelled clip (bytes as uploaded; the server validates them by decoding first).

        Returns the record; ``duplicate`` is true when the same bytes were already stored with this label and
        split. Raises InvalidRequest for a bad name or the same bytes under another label/split, TooLarge past
        ``max_bytes``.
        """
        k.check_task(task)
        _check_split(split)
        _check_label(label)
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
            raise InvalidRequest("a clip must be non-empty bytes")
        if self.max_bytes is not None and len(data) > self.max_bytes:
            raise TooLarge(f"clip of {len(data)} bytes is larger than the limit of {self.max_bytes}")
        data = bytes(data)
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.clip_path(task, split, label, sha256)

        existing = self.redis.hget(k.clips_key(task), sha256)
        if existing is not None:
            return self._same_or_refuse(ClipRecord.model_validate_json(existing), label, split)

        record = ClipRecord(
            task=task,
            label=label,
            split=split,
            sha256=sha256,
            size=len(data),
            path=path.relative_to(self.data_dir).as_posix(),
            created_at=datetime.now(timezone.utc),
        )
        wrote = _write_atomic(path, data)
        # the task index is another slot (Redis Cluster): SADD before the script (a crash leaves a name tasks()
        # skips) and after it (a concurrent delete_task may have removed the name in between)
        self.redis.sadd(k.CLIP_TASKS, task)
        added, stored = self._add(
            keys=(k.clips_key(task), k.clip_counts_key(task)),
            args=(sha256, record.model_dump_json(exclude={"duplicate"}), f"{split}/{label}"),
        )
        self.redis.sadd(k.CLIP_TASKS, task)
        if int(added):
            return record
        # lost a race with a concurrent upload of the same bytes: keep its record, drop our copy if it differs
        winner = ClipRecord.model_validate_json(stored)
        if wrote and winner.path != record.path:
            path.unlink(missing_ok=True)
        return self._same_or_refuse(winner, label, split)

    @staticmethod
    def _same_or_refuse(existing: ClipRecord, label: str, split: str) -> ClipRecord:
        if existing.label != label or existing.split != split:
            raise InvalidRequest(
                f"this clip ({existing.sha256[:12]}) is already stored as label {existing.label!r} in split "
                f"{existing.split!r}"
            )
        return existing.model_copy(update={"duplicate": True})

    def counts(self, task: str) -> dict[str, dict[str, int]]:
        """Clip counts ``{split: {label: n}}`` (every split present, possibly empty)."""
        k.check_task(task)
        raw = self.redis.hgetall(k.clip_counts_key(task))
        out: dict[str, dict[str, int]] = {split: {} for split in SPLITS}
        for field, value in raw.items():
            split, _, label = (field.decode() if isinstance(field, bytes) else field).partition("/")
            if split in out and int(value) > 0:
                out[split][label] = int(value)
        for split in out:
            out[split] = dict(sorted(out[split].items()))
        return out

    def list_clips(self, task: str, split: str) -> list[tuple[Path, str]]:
        """``(absolute path, label)`` of every clip of a split, sorted by label then sha256."""
        k.check_task(task)
        _check_split(split)
        records = [ClipRecord.model_validate_json(raw) for raw in self.redis.hvals(k.clips_key(task))]
        chosen = sorted((r for r in records if r.split == split), key=lambda r: (r.label, r.sha256))
        # paths are rebuilt through the validating builder, never taken from the stored record
        return [(self.clip_path(task, r.split, r.label, r.sha256), r.label) for r in chosen]

    def tasks(self) -> list[str]:
        """Tasks with at least one clip, sorted."""
        names = sorted(m.decode() if isinstance(m, bytes) else m for m in self.redis.smembers(k.CLIP_TASKS))
        # the index may name a task whose clips are gone (a crash after delete_task's script): skip those
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.exists(k.clips_key(name))
        return [name for name, present in zip(names, pipe.execute() if names else [], strict=True) if present]

    def delete_task(self, task: str) -> int:
        """Remove a task's clip index, counts and files. Returns the number of clips the index held."""
        k.check_task(task)
        removed = int(self._delete(keys=(k.clips_key(task), k.clip_counts_key(task))))
        # the index entry goes after the clips; an upload that re-created them meanwhile may have SADDed before our
        # SREM, so look again and put it back
        self.redis.srem(k.CLIP_TASKS, task)
        if self.redis.exists(k.clips_key(task)):
            self.redis.sadd(k.CLIP_TASKS, task)
        # index first, files second: a listing made after this call names no file that is being removed
        task_dir = self.root / task
        if task_dir.is_dir() and not task_dir.is_symlink():
            shutil.rmtree(task_dir)
        return removed

    def close(self) -> None:
        """Close the client if the store created it."""
        if self._owns_client:
            self.redis.close()

    def __enter__(self) -> ClipStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_atomic(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` via a temp file and ``os.replace``; False if it already exists (content-addressed:
    same name, same bytes)."""
    if path.exists():
        return False
    atomic_write(path, data)
    return True
