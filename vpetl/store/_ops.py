"""The adapter store's operations, written once for both the sync and the async store ("sans-IO").

Each operation is a generator: it validates its input, yields :class:`Script` / :class:`Command` / :class:`Batch`
requests, receives each Redis reply through ``send()``, and returns the result (or raises a ``VpetlError``).
``AdapterStore`` drives it with blocking calls, ``AsyncAdapterStore`` with awaits; neither holds any logic of its
own, so they cannot drift. Requests name every key they touch, and only a :class:`Batch` spans slots (see ``keys``).
Validation happens before the first yield: a bad task name is refused before Redis is touched.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from vpetl.errors import InvalidRequest, UnknownTask, UnknownVersion
from vpetl.protocol import is_valid_task_name
from vpetl.store import _scripts as lua
from vpetl.store import keys as k
from vpetl.store.records import (
    StoreError,
    TaskPage,
    TaskSummary,
    VersionRecord,
    parse_int,
    parse_record,
    parse_summary,
    record_body,
    utc_now,
)

T = TypeVar("T")
_PREFIX_RE = re.compile(r"^[a-z0-9_.-]{1,64}$")


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


@dataclass(frozen=True)
class Batch:
    """Run these requests in one non-transactional pipeline (one round trip per node; on a cluster the requests
    may touch different slots); the reply is the list of their replies. Scripts in a batch run as EVAL with their
    source, which a cluster pipeline can route and which never fails with NOSCRIPT."""

    requests: tuple[Script | Command, ...]


Request = Script | Command | Batch
Op = Generator[Request, Any, T]


def redis_args(request: Script | Command) -> tuple[str | bytes | int, ...]:
    """The raw command of a request (a script as EVAL with its source)."""
    if isinstance(request, Script):
        return ("EVAL", lua.ADAPTER_SCRIPTS[request.name], len(request.keys), *request.keys, *request.args)
    return request.args


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


def check_job_id(job_id: object) -> str:
    """A training job id as the store takes it: 1–64 lower-case hex digits (what ``JobQueue.submit`` makes)."""
    if not isinstance(job_id, str) or not 0 < len(job_id) <= 64 or not all(c in "0123456789abcdef" for c in job_id):
        raise InvalidRequest(f"invalid job id {job_id!r}: expected 1-64 lower-case hex digits")
    return job_id


def publish(
    task: str, data: bytes, meta: Mapping[str, Any], job_id: str | None = None, keep: int = 0
) -> Op[VersionRecord]:
    """One script writes bytes, record and pointer (version = latest+1) and publishes the event; the task index
    is updated before it (a failed publish leaves a name readers skip) and after it (a concurrent delete may have
    removed the name in between). With ``job_id`` the publish is idempotent per job: the same script returns the
    version that job already published, if any, instead of making another. With ``keep`` > 0 the same script
    prunes all but the newest ``keep`` versions (the new, current one is always kept) and blobs no kept version
    names."""
    k.check_task(task)
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise InvalidRequest(f"invalid retention {keep!r}: expected an integer >= 0 (0 = keep every version)")
    if job_id is not None:
        check_job_id(job_id)
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise InvalidRequest("adapter data must be non-empty bytes")
    data = bytes(data)
    sha256 = hashlib.sha256(data).hexdigest()  # computed here: a caller's claim is never trusted for the key
    now = utc_now()
    body = record_body(task, sha256, len(data), now, meta)
    yield Command(("ZADD", k.TASKS_INDEX, 0, task))
    reply = yield Script(
        "publish",
        (k.task_key(task), k.versions_key(task), k.blobs_key(task), k.task_jobs_key(task)),
        (task, body, now, sha256, k.EVENTS_CHANNEL, data, job_id or "", keep),
    )
    yield Command(("ZADD", k.TASKS_INDEX, 0, task))
    if int(reply[0]) not in (lua.OK, lua.ALREADY):
        raise StoreError(f"unexpected publish script status {reply[0]!r}")
    return parse_record(reply[1])


def get(task: str, version: int | None, with_blob: bool) -> Op[tuple[VersionRecord, bytes | None]]:
    """Record (and blob) of ``version``, or of the current version, read atomically with the pointer."""
    k.check_task(task)
    if version is not None:
        check_version(version)
    reply = yield Script(
        "get",
        (k.task_key(task), k.versions_key(task), k.blobs_key(task)),
        ("" if version is None else version, "1" if with_blob else "0"),
    )
    if int(reply[0]) != lua.OK:
        _raise_status(int(reply[0]), task, version)
    record = parse_record(reply[1])
    return record, (reply[2] if with_blob else None)


def job_version(task: str, job_id: str) -> Op[int | None]:
    """The version training job ``job_id`` published to ``task`` (``None``: it has not published one)."""
    k.check_task(task)
    check_job_id(job_id)
    return parse_int((yield Command(("HGET", k.task_jobs_key(task), job_id))))


def get_blob(task: str, sha256: str) -> Op[bytes | None]:
    """Artifact bytes of one of the task's versions by content hash, or ``None``."""
    k.check_task(task)
    k.check_sha256(sha256)
    return (yield Command(("HGET", k.blobs_key(task), sha256)))


def get_pointers(tasks: Iterable[str]) -> Op[dict[str, int | None]]:
    """Current version of each task (``None`` for a task that does not exist), in one pipelined round trip."""
    names = list(dict.fromkeys(k.check_task(t) for t in tasks))
    if not names:
        return {}
    reply = yield Batch(tuple(Command(("HGET", k.task_key(t), "current")) for t in names))
    return {t: parse_int(v) for t, v in zip(names, reply, strict=True)}


def history(task: str) -> Op[list[VersionRecord]]:
    """Every version of a task, oldest first."""
    k.check_task(task)
    reply = yield Script("history", (k.task_key(task), k.versions_key(task)))
    if int(reply[0]) != lua.OK:
        _raise_status(int(reply[0]), task, None)
    return sorted((parse_record(raw) for raw in reply[1]), key=lambda r: r.version)


def _summaries(names: list[str]) -> Op[list[TaskSummary]]:
    """The summaries of ``names`` in one pipelined round trip, skipping names without a current version."""
    if not names:
        return []
    rows = yield Batch(tuple(Script("summary", (k.task_key(t), k.versions_key(t))) for t in names))
    return [parse_summary([t, *row]) for t, row in zip(names, rows, strict=True) if row]


def _adopt_legacy_index(members: list[bytes | str]) -> Op[None]:
    """Move names an older process SADDed to the legacy set into the zset; SREM exactly those (a name SADDed
    meanwhile stays for the next reader), so no live task is lost in a rolling upgrade."""
    if members:
        yield Command(("ZADD", k.TASKS_INDEX, *[part for m in members for part in (0, m)]))
        yield Command(("SREM", k.TASKS, *members))


def _names(raw: list[bytes | str]) -> list[str]:
    return [n for n in (_text(m) for m in raw) if is_valid_task_name(n)]


def list_tasks() -> Op[list[TaskSummary]]:
    """Every task with its pointers and current record, sorted by name (each task read atomically; the index may
    name tasks that no longer exist, and those are skipped)."""
    legacy, members = yield Batch((Command(("SMEMBERS", k.TASKS)), Command(("ZRANGE", k.TASKS_INDEX, 0, -1))))
    if legacy:
        yield from _adopt_legacy_index(list(legacy))
        members = yield Command(("ZRANGE", k.TASKS_INDEX, 0, -1))
    return (yield from _summaries(_names(members)))


MAX_PAGE = 1000
PAGE_SCAN_CHUNKS = 8  # with a method filter, one request scans at most this many index chunks, then hands a cursor


def _prefix_range(prefix: str) -> tuple[bytes, bytes]:
    # task names are ASCII, so b"\xff" sorts after every name that starts with the prefix
    return (b"[" + prefix.encode(), b"[" + prefix.encode() + b"\xff") if prefix else (b"-", b"+")


def list_page(
    cursor: str | None = None, limit: int = 100, prefix: str = "", method: str | None = None
) -> Op[TaskPage]:
    """A page of tasks in name order after ``cursor`` (a task name from a previous page's ``next_cursor``),
    names starting with ``prefix``, and (optionally) whose current version's method is ``method``.

    O(log N + limit) store work: ``ZRANGEBYLEX`` on the index, then one pipelined summary script per name. Stale
    index names and (with ``method``) non-matching tasks are skipped, so a page can hold fewer than ``limit``
    tasks and still have a ``next_cursor``; ``total`` is ``ZLEXCOUNT`` of the prefix (stale names included).
    """
    if cursor is not None:
        k.check_task(cursor)
    if prefix and not _PREFIX_RE.fullmatch(prefix):
        raise InvalidRequest(f"invalid prefix {prefix[:80]!r}: expected up to 64 of [a-z0-9_.-]")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"invalid limit {limit!r}: expected 1..{MAX_PAGE}")
    low, high = _prefix_range(prefix)
    legacy, total = yield Batch((Command(("SMEMBERS", k.TASKS)), Command(("ZLEXCOUNT", k.TASKS_INDEX, low, high))))
    if legacy:
        yield from _adopt_legacy_index(list(legacy))
        total = yield Command(("ZLEXCOUNT", k.TASKS_INDEX, low, high))
    tasks: list[TaskSummary] = []
    last, exhausted = cursor, False
    for _ in range(PAGE_SCAN_CHUNKS if method is not None else 1):
        want = limit - len(tasks)
        start = b"(" + last.encode() if last is not None and last.encode() >= low[1:] else low
        raw = yield Command(("ZRANGEBYLEX", k.TASKS_INDEX, start, high, "LIMIT", 0, want + 1))
        exhausted = len(raw) <= want  # one extra name asked for: is there anything after this chunk?
        names = [_text(m) for m in raw[:want]]
        if names:
            last = names[-1]
        summaries = yield from _summaries([n for n in names if is_valid_task_name(n)])
        tasks += [s for s in summaries if method is None or s.current.method == method]
        if exhausted or len(tasks) >= limit:
            break
    return TaskPage(tasks=tasks, total=int(total), next_cursor=None if exhausted else last)


def detail(task: str) -> Op[tuple[TaskSummary, list[VersionRecord]]]:
    """One task's summary and its whole history (oldest first), read atomically in one script call: O(1) store
    operations, whatever the number of tasks."""
    k.check_task(task)
    reply = yield Script("detail", (k.task_key(task), k.versions_key(task)))
    if int(reply[0]) != lua.OK:
        _raise_status(int(reply[0]), task, None)
    current, latest, created, updated, record, records = reply[1:]
    summary = parse_summary([task, current, latest, created, updated, record, len(records)])
    return summary, sorted((parse_record(raw) for raw in records), key=lambda r: r.version)


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
    """Remove the task's pointer, versions and bytes (event ``delete``), then its index entry."""
    k.check_task(task)
    reply = yield Script(
        "delete",
        (k.task_key(task), k.versions_key(task), k.blobs_key(task), k.task_jobs_key(task)),
        (task, k.EVENTS_CHANNEL),
    )
    # the index entry goes after the data (a crash in between leaves a name readers skip); a publish that
    # re-created the task meanwhile may have ZADDed before our ZREM, so look again and put it back
    yield Command(("ZREM", k.TASKS_INDEX, task))
    if int((yield Command(("HEXISTS", k.task_key(task), "current")))):
        yield Command(("ZADD", k.TASKS_INDEX, 0, task))
    if int(reply[0]) != lua.OK:
        _raise_status(int(reply[0]), task, None)
    return {"versions": int(reply[1]), "blobs_freed": int(reply[2])}


def _text(raw: bytes | str) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else raw
