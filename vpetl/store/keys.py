"""Redis key layout of the adapter and clip stores: the only place key names are spelled out.

Adapters (``vpetl.store.adapters``)::

    vpetl:blob:<sha256>        string  immutable artifact bytes, content-addressed (written SET NX)
    vpetl:blobrefs:<sha256>    set     names of the tasks with a version pointing at the blob
    vpetl:task:<task>          hash    current, latest, created_at, updated_at
    vpetl:versions:<task>      hash    version -> JSON VersionRecord (never rewritten)
    vpetl:tasks                set     task names that exist (have a current version)
    vpetl:events               channel {"event", "task", "version", "sha256"} JSON; ids only, never bytes

Clips (``vpetl.store.clips``)::

    vpetl:clips:<task>         hash    sha256 -> JSON ClipRecord (one entry per distinct clip)
    vpetl:clipcounts:<task>    hash    "<split>/<label>" -> number of clips
    vpetl:cliptasks            set     task names with at least one clip

``<task>`` is always a name that passed :func:`check_task`, so it never contains a separator a key could be
confused by, and ``<sha256>`` is always 64 lower-case hex digits computed by the store itself.
"""

from __future__ import annotations

import re

from vpetl.errors import InvalidRequest
from vpetl.protocol import is_valid_task_name

PREFIX = "vpetl:"
EVENTS_CHANNEL = PREFIX + "events"
TASKS = PREFIX + "tasks"
TASK_PREFIX = PREFIX + "task:"
VERSIONS_PREFIX = PREFIX + "versions:"
BLOB_PREFIX = PREFIX + "blob:"
BLOBREFS_PREFIX = PREFIX + "blobrefs:"
CLIPS_PREFIX = PREFIX + "clips:"
CLIP_COUNTS_PREFIX = PREFIX + "clipcounts:"
CLIP_TASKS = PREFIX + "cliptasks"

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


def task_key(task: str) -> str:
    """Hash with the task's current/latest version pointers and timestamps."""
    return TASK_PREFIX + task


def versions_key(task: str) -> str:
    """Hash version -> JSON version record."""
    return VERSIONS_PREFIX + task


def blob_key(sha256: str) -> str:
    """Immutable artifact bytes, keyed by their sha256."""
    return BLOB_PREFIX + sha256


def blobrefs_key(sha256: str) -> str:
    """Set of task names referencing the blob; the blob is deleted when the last task is."""
    return BLOBREFS_PREFIX + sha256


def clips_key(task: str) -> str:
    """Hash sha256 -> JSON clip record for one task's uploaded clips."""
    return CLIPS_PREFIX + task


def clip_counts_key(task: str) -> str:
    """Hash ``"<split>/<label>"`` -> clip count for one task."""
    return CLIP_COUNTS_PREFIX + task
