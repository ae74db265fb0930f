"""The adapter store's operations, written once for both the sync and the async store ("sans-IO").

Each operation is a generator: it validates its input, yields :class:`Script` / :class:`Command` requests, receives
each Redis reply through ``send()``, and returns the result (or raises a ``VpetlError``). ``AdapterStore`` drives it
with blocking calls, ``AsyncAdapterStore`` with awaits; neither holds any logic of its own, so they cannot drift.
Validation happens before the first yield: a bad task name is refused before Redis is touched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from vpetl.errors import InvalidRequest, UnknownTask, UnknownVersion
from vpetl.store import _scripts as lua
from vpetl.store import keys as k
from vpetl.store.records import (
    StoreError,
    TaskSummary,
    VersionRecord,
    parse_int,
    parse_record,
    parse_summary,
    record_body,
    utc_now,
)

T = TypeVar("T")

# A blob is written with this TTL and made permanent by the publish script, so a publisher that dies between the
# two leaves nothing behind; an hour is far longer than the gap between the two calls.
PENDING_BLOB_TTL_S = 3600
# Publish re-writes the blob when a concurrent delete of another task freed it in between (rare; bounded).
PUBLISH_ATTEMPTS = 5


@dataclass(frozen=True)
class Script:
    """Run the named script of ``_scripts.ADAPTER_SCRIPTS`` with these keys and args."""

    name: str
    keys: tuple[str, ...]
    args: tuple[str | bytes | int, ...] = ()


@dataclass(frozen=True)
class Command:
    """Run one plain Redis command."""

    args: tuple[str | bytes | int, ...]


Request = Script | Command
Op = Generator[Request, Any, T]


def check_version(version: object) -> int:
    """A version number as the store takes it: an int ≥ 1 (bools and strings refused)."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidRequest(f"invalid version {version!r}: expected an integer >= 1")
    return version


def _raise_status(status: int, task: str, version: int | None) -> None:
    if status == lua.NO_TASK:
        raise UnknownTask(f"unknown task {task!r}")
    if status == lua.NO_VERSION:
        raise UnknownVersion(f"task {task!r} has no version {version}")
    if status == lua.NO_BLOB:
        raise StoreError(f"task {task!r} version {version}: artifact blob missing from Redis")
    raise StoreError(f"unexpected script status {status!r}")


def publish(task: str, data: bytes, meta: Mapping[str, Any]) -> Op[VersionRecord]:
    """Blob first (SET NX, content-addressed), then one script: version = latest+1, record, pointer, event."""
    k.check_task(task)
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise InvalidRequest("adapter data must be non-empty bytes")
    data = bytes(data)
    sha256 = hashlib.sha256(data).hexdigest()  # computed here: a caller's claim is never trusted for the key
    now = utc_now()
    body = record_body(task, sha256, len(data), now, meta)
    script = Script(
        "publish",
        (k.task_key(task), k.versions_key(task), k.TASKS, k.blob_key(sha256), k.blobrefs_key(sha256)),
        (task, body, now, sha256, k.EVENTS_CHANNEL),
    )
    for _ in range(PUBLISH_ATTEMPTS):
        yield Command(("SET", k.blob_key(sha256), data, "NX", "EX", PENDING_BLOB_TTL_S))
        reply = yield script
        if int(reply[0]) == lua.OK:
            return parse_record(reply[1])
    raise StoreError(f"publishing {task!r}: the blob {sha256[:12]} kept disappearing (concurrent deletes)")


def get(task: str, version: int | None, with_blob: bool) -> Op[tuple[VersionRecord, bytes | None]]:
    """Record (and blob) of ``version``, or of the current version, read atomically with the pointer."""
    k.check_task(task)
    if version is not None:
        check_version(version)
    reply = yield Script(
        "get",
        (k.task_key(task), k.versions_key(task)),
        ("" if version is None else version, "1" if with_blob else "0", k.BLOB_PREFIX),
    )
    if int(reply[0]) != lua.OK:
        _raise_status(int(reply[0]), task, version)
    record = parse_record(reply[1])
    return record, (reply[2] if with_blob else None)


def get_blob(sha256: str) -> Op[bytes | None]:
    """Artifact bytes by content hash, or ``None``."""
    k.check_sha256(sha256)
    return (yield Command(("GET", k.blob_key(sha256))))


def get_pointers(tasks: Iterable[str]) -> Op[dict[str, int | None]]:
    """Current version of each task (``None`` for a task that does not exist), in one round trip."""
    names = list(dict.fromkeys(k.check_task(t) for t in tasks))
    if not names:
        return {}
    reply = yield Script("get_pointers", tuple(k.task_key(t) for t in names))
    return {t: parse_int(v) for t, v in zip(names, reply, strict=True)}


def history(task: str) -> Op[list[VersionRecord]]:
    """Every version of a task, oldest first."""
    k.check_task(task)
    reply = yield Script("history", (k.task_key(task), k.versions_key(task)))
    if int(reply[0]) != lua.OK:
        _raise_status(int(reply[0]), task, None)
    return sorted((parse_record(raw) for raw in reply[1]), key=lambda r: r.version)


def list_tasks() -> Op[list[TaskSummary]]:
    """Every task with its pointers and current record, sorted by name."""
    reply = yield Script("list_tasks", (k.TASKS,), (k.TASK_PREFIX, k.VERSIONS_PREFIX))
    return sorted((parse_summary(row) for row in reply), key=lambda s: s.task)


def rollback(task: str, version: int) -> Op[VersionRecord]:
    """Move the pointer to an existing version (older or newer); event ``rollback``."""
    k.check_task(task)
    check_version(version)
    reply = yield Script(
        "rollback",
        (k.task_key(task), k.versions_key(task)),
        (version, utc_now(), task, k.EVENTS_CHANNEL),
    )
    if int(reply[0]) != lua.OK:
        _raise_status(int(reply[0]), task, version)
    return parse_record(reply[1])


def delete(task: str) -> Op[dict[str, int]]:
    """Remove the task's pointer and versions, and the blobs no other task references; event ``delete``."""
    k.check_task(task)
    reply = yield Script(
        "delete",
        (k.task_key(task), k.versions_key(task), k.TASKS),
        (task, k.EVENTS_CHANNEL, k.BLOB_PREFIX, k.BLOBREFS_PREFIX),
    )
    if int(reply[0]) != lua.OK:
        _raise_status(int(reply[0]), task, None)
    return {"versions": int(reply[1]), "blobs_freed": int(reply[2])}
