"""Clip uploads: bytes at ``<store>/<task>/<split>/<label>/<sha256>.mp4``, index and counts in Redis.

The store is a folder or any fsspec URL (:class:`~vpetl.store.blobs.BlobStore`): by default
``<data_dir>/clips``; ``s3://bucket/prefix`` (setting ``clip_store``, env ``VPETL_CLIP_STORE``) lets a worker on
another node read what the API stored. Every key component is validated (task name, split from a fixed list, label
by :data:`LABEL_RE`, a sha256 the store computed), and a local key is checked to lie under the clips root, so user
input never becomes a path unchecked. A clip is identified by its sha256 within a task: uploading the same bytes
again with the same label and split is a no-op that returns the stored record, and with a different label or split
it is refused (the same clip in train and val would leak, and in two classes it would be contradictory).

Bytes are written completely (local: temp file + ``os.replace``; object store: one PUT) *before* the index entry,
so the index never names a missing object; a write interrupted before its index entry leaves at most an unnamed
object, which the next upload of the same bytes overwrites or reuses. The store is blocking; the server calls it
from a thread.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import redis
from pydantic import BaseModel, ConfigDict, Field

from vpetl.errors import DatasetError, InvalidRequest, TooLarge
from vpetl.store import keys as k
from vpetl.store._scripts import ADD_CLIP, DELETE_CLIPS
from vpetl.store.adapters import redis_client
from vpetl.store.blobs import BlobStore

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
    """One stored clip. ``path`` is its key relative to the clip store root (never an absolute server path)."""

    model_config = ConfigDict(frozen=True)

    task: str
    label: str
    split: Split
    sha256: str
    size: int = Field(..., ge=1)
    path: str
    created_at: datetime
    duplicate: bool = Field(False, description="true when these bytes were already stored (nothing was written)")


@dataclass(frozen=True)
class StoredClip:
    """One indexed clip as a trainer reads it: no local path, the bytes on demand (``read_bytes``, like a Path)."""

    task: str
    split: str
    label: str
    sha256: str
    key: str
    blobs: BlobStore = dataclasses.field(repr=False, compare=False)

    def read_bytes(self) -> bytes:
        try:
            return self.blobs.read(self.key)
        except FileNotFoundError as e:  # only after a concurrent delete_task: say which clip, not a bare OSError
            raise DatasetError(f"clip {self} is in the index but not in the clip store (task being deleted?)") from e

    def __str__(self) -> str:
        return self.blobs.display(self.key)


class ClipStore:
    """Blocking clip store.

    Args:
        data_dir: the data directory; by default clips go under ``data_dir/clips``.
        client: a Redis URL (the store then owns its client) or a ``redis.Redis`` to share.
        max_bytes: refuse clips larger than this (:class:`~vpetl.errors.TooLarge`); ``None`` for no limit.
        store_url: where the clip bytes go: a local path or fsspec URL (``s3://bucket/prefix``, ``memory://``);
            ``None`` for ``data_dir/clips``. Every process sharing the Redis index must use the same one.
        storage_options: fsspec filesystem options (``endpoint_url``, ``key``, ``secret``, …); ``None`` leaves
            endpoint and credentials to the backend's environment (for S3: ``AWS_ENDPOINT_URL``, ``AWS_*``).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        client: str | redis.Redis,
        max_bytes: int | None = None,
        *,
        store_url: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.blobs = BlobStore(store_url or (self.data_dir / "clips"), storage_options)
        self.max_bytes = max_bytes
        self._owns_client = isinstance(client, str)
        self.redis: redis.Redis = redis_client(client) if isinstance(client, str) else client
        self._add = self.redis.register_script(ADD_CLIP)
        self._delete = self.redis.register_script(DELETE_CLIPS)

    def clip_key(self, task: str, split: str, label: str, sha256: str) -> str:
        """Where a clip lives in the store; every component validated (a local key also checked to stay under the
        clips root: the regexes already exclude separators and "..", a symlink could still escape)."""
        name = k.check_sha256(sha256) + CLIP_SUFFIX
        return self.blobs.key(k.check_task(task), _check_split(split), _check_label(label), name)

    def read_clip(self, task: str, split: str, label: str, sha256: str) -> bytes:
        """The bytes of a stored clip (DatasetError if the store has no such object)."""
        return self._ref(task, split, label, sha256).read_bytes()

    def _ref(self, task: str, split: str, label: str, sha256: str) -> StoredClip:
        return StoredClip(task, split, label, sha256, self.clip_key(task, split, label, sha256), self.blobs)

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
        key = self.clip_key(task, split, label, sha256)

        existing = self.redis.hget(k.clips_key(task), sha256)
        if existing is not None:
            return self._same_or_refuse(ClipRecord.model_validate_json(existing), label, split)

        record = ClipRecord(
            task=task,
            label=label,
            split=split,
            sha256=sha256,
            size=len(data),
            path=f"{task}/{split}/{label}/{sha256}{CLIP_SUFFIX}",
            created_at=datetime.now(timezone.utc),
        )
        wrote = self.blobs.write(key, data)  # complete before the index names it
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
        # (compared by label/split, not by the stored path, whose format older versions wrote differently)
        winner = ClipRecord.model_validate_json(stored)
        if wrote and (winner.split, winner.label) != (split, label):
            self.blobs.remove(key)
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

    def list_clips(self, task: str, split: str) -> list[StoredClip]:
        """Every clip of a split (label, sha256, ``read_bytes()``), sorted by label then sha256."""
        k.check_task(task)
        _check_split(split)
        records = [ClipRecord.model_validate_json(raw) for raw in self.redis.hvals(k.clips_key(task))]
        chosen = sorted((r for r in records if r.split == split), key=lambda r: (r.label, r.sha256))
        # keys are rebuilt through the validating builder, never taken from the stored record
        return [self._ref(task, r.split, r.label, r.sha256) for r in chosen]

    def tasks(self) -> list[str]:
        """Tasks with at least one clip, sorted."""
        names = sorted(m.decode() if isinstance(m, bytes) else m for m in self.redis.smembers(k.CLIP_TASKS))
        # the index may name a task whose clips are gone (a crash after delete_task's script): skip those
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.exists(k.clips_key(name))
        return [name for name, present in zip(names, pipe.execute() if names else [], strict=True) if present]

    def delete_task(self, task: str) -> int:
        """Remove a task's clip index, counts and objects. Returns the number of clips the index held."""
        k.check_task(task)
        removed = int(self._delete(keys=(k.clips_key(task), k.clip_counts_key(task))))
        # the index entry goes after the clips; an upload that re-created them meanwhile may have SADDed before our
        # SREM, so look again and put it back
        self.redis.srem(k.CLIP_TASKS, task)
        if self.redis.exists(k.clips_key(task)):
            self.redis.sadd(k.CLIP_TASKS, task)
        # index first, objects second: a listing made after this call names no object that is being removed
        self.blobs.remove_tree(task)
        return removed

    def close(self) -> None:
        """Close the client if the store created it."""
        if self._owns_client:
            self.redis.close()

    def __enter__(self) -> ClipStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
