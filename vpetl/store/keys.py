"""Redis key layout of the adapter, clip and job stores: the only place key names are spelled out.

Every key that belongs to one task carries the task as a Redis Cluster **hash tag** (``{<task>}``), so all of a
task's keys live in one slot and each single-task Lua script touches one slot: the same scripts run on a standalone
Redis, a managed endpoint and a Redis Cluster. Every script gets every key it touches as ``KEYS`` (nothing is built
from ``ARGV`` inside a script), which is what Redis Cluster requires.

Adapters (``vpetl.store.adapters``)::

    vpetl:{<task>}:task        hash    current, latest, created_at, updated_at
    vpetl:{<task>}:versions    hash    version -> JSON VersionRecord (never rewritten)
    vpetl:{<task>}:blobs       hash    sha256 -> immutable artifact bytes (content-addressed within the task)
    vpetl:{<task>}:jobs        hash    training job id -> the version that job published (idempotent publish)
    vpetl:tasks:index          zset    index: task names that may exist, all score 0 (lexicographic: pages)
    vpetl:tasks                set     legacy index (before the zset); readers move its names over, then SREM
    vpetl:events               channel {"event", "task", "version", "sha256"} JSON; ids only, never bytes

Clips (``vpetl.store.clips``)::

    vpetl:{<task>}:clips       hash    sha256 -> JSON ClipRecord (one entry per distinct clip)
    vpetl:{<task>}:clipcounts  hash    "<split>/<label>" -> number of clips
    vpetl:cliptasks            set     index: task names that may have clips

Jobs (``vpetl.store.jobs``), all under one hash tag so a submit stays one MULTI/EXEC on one slot::

    vpetl:{jobs}:stream        stream  job ids, consumer group "workers"
    vpetl:{jobs}:index         zset    job id -> submit time
    vpetl:{jobs}:job:<id>      hash    state, params, progress, result, attempts, dead_letter, …
    vpetl:{jobs}:deadletter    stream  jobs given up after max attempts (job_id, error, attempts, worker)

Design choices:

- **Blobs live inside the task's slot** (a hash field per distinct sha256 in ``vpetl:{<task>}:blobs``) instead of
  a global ``vpetl:blob:<sha256>`` shared by all tasks. A global blob lives in another slot than the task's
  pointer, so publish / get-with-bytes / delete could not be one atomic script on a cluster, and a version could
  point at a blob another task's delete had just freed. Keeping them per task makes the bytes part of the same
  atomic script as the record and pointer (publish sends the bytes as a script argument: no pending blob, no TTL,
  no orphan). One hash key (rather than one key per sha256) lets a script declare the key before it has read
  which sha256 the record names. The cost: the same bytes published under two tasks are stored twice
  (cross-task dedup is dropped; within a task, re-publishing the same bytes still stores them once).
- **The index sets are in their own slot** and are maintained outside the per-task scripts, in an order that stays
  correct under failure: publish ZADDs the task to ``vpetl:tasks:index`` before its script and again after it;
  delete runs its script, then ZREMs, then re-checks the pointer and ZADDs back if a concurrent publish re-created
  the task. The index is therefore a superset of the live tasks (a crash can leave a stale name, never drop a live
  one except in a crash racing a concurrent delete); readers skip names without a current pointer. Clip tasks
  work the same way with ``vpetl:cliptasks`` and the clip index.
- **The task index is a sorted set with every score 0**, so ``ZRANGEBYLEX`` returns names in byte order: a page of
  ``GET /adapters`` is one ``ZRANGEBYLEX (<cursor> … LIMIT 0 n`` (O(log N + n)) plus one pipelined summary script
  per name, and a name prefix is a lex range (``ZLEXCOUNT`` counts it in O(log N)). It replaced the set
  ``vpetl:tasks``: a reader that finds names in that set (written by an older process) ZADDs them and SREMs exactly
  those names, so a rolling upgrade loses no task.

``<task>`` is always a name that passed :func:`check_task` (``^[a-z0-9][a-z0-9_.-]{0,63}$``): it holds no braces
or separators a key could be confused by, and ``<sha256>`` is always 64 lower-case hex digits computed by the
store. Task keys and job keys cannot collide: their suffixes after the tag differ.

This layout replaced ``vpetl:task:<task>`` / ``vpetl:blob:<sha256>`` / ``vpetl:jobs`` (untagged): data written
under the old layout is not read (republish adapters, re-upload clips); stale names in the index sets are skipped.
"""

from __future__ import annotations

import re

from vpetl.errors import InvalidRequest
from vpetl.protocol import is_valid_task_name

PREFIX = "vpetl:"
EVENTS_CHANNEL = PREFIX + "events"
TASKS = PREFIX + "tasks"  # the legacy set: only read (and drained into TASKS_INDEX)
TASKS_INDEX = PREFIX + "tasks:index"
CLIP_TASKS = PREFIX + "cliptasks"
JOBS_TAG = PREFIX + "{jobs}:"
JOB_STREAM = JOBS_TAG + "stream"
JOB_INDEX = JOBS_TAG + "index"
JOB_DEAD_LETTER = JOBS_TAG + "deadletter"

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def check_task(task: object) -> str:
    """Return ``task`` if it is a valid task name, else raise :class:`InvalidRequest` (before any Redis call)."""
    if not isinstance(task, str) or not is_valid_task_name(task):
        shown = repr(task) if not isinstance(task, str) or len(task) <= 80 else repr(task[:80]) + "…"
        raise InvalidRequest(f"invalid task name {shown}: expected ^[a-z0-9][a-z0-9_.-]{{0,63}}$ without '..'")
    return task


def check_sha256(sha256: object) -> str:
    """Return ``sha256`` if it is 64 lower-case hex digits, else raise :class:`InvalidRequest`."""
    if not isinstance(sha256, str) or not SHA256_RE.fullmatch(sha256):
        raise InvalidRequest("invalid sha256: expected 64 lower-case hex digits")
    return sha256


def _tagged(task: str, name: str) -> str:
    # the braces make Redis Cluster hash only the task name: every key of one task lands in one slot
    return f"{PREFIX}{{{task}}}:{name}"


def task_key(task: str) -> str:
    """Hash with the task's current/latest version pointers and timestamps."""
    return _tagged(task, "task")


def versions_key(task: str) -> str:
    """Hash version -> JSON version record."""
    return _tagged(task, "versions")


def blobs_key(task: str) -> str:
    """Hash sha256 -> artifact bytes of the task's versions (content-addressed within the task)."""
    return _tagged(task, "blobs")


def task_jobs_key(task: str) -> str:
    """Hash training job id -> version it published. It lives in the task's slot (not under ``{jobs}``) so the
    publish script itself records it: "already published by this job?" and the publish are one atomic step."""
    return _tagged(task, "jobs")


def clips_key(task: str) -> str:
    """Hash sha256 -> JSON clip record for one task's uploaded clips."""
    return _tagged(task, "clips")


def clip_counts_key(task: str) -> str:
    """Hash ``"<split>/<label>"`` -> clip count for one task."""
    return _tagged(task, "clipcounts")


def job_key(job_id: str) -> str:
    """Hash of one training job (same hash tag as the job stream and index)."""
    return f"{JOBS_TAG}job:{job_id}"
