"""What the adapter store keeps per version and per task, and how it is (de)serialised.

The models are part of the HTTP API responses (``GET /adapters``, ``GET /adapters/{task}``), so they live apart from
any Redis code; the sync and async stores both parse replies with the functions here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vpetl.errors import InvalidRequest, VpetlError

# Fields the store owns in a version record; a caller's metadata cannot override them (an artifact's own
# ``task`` or ``created_at`` describe the file, the record describes this published version of it).
STORE_FIELDS = ("version", "task", "sha256", "size", "created_at")
MAX_META_BYTES = 1024 * 1024


class StoreError(VpetlError):
    """The store found data it did not write (a corrupt record) or could not complete an operation."""

    code = "store_error"
    http_status = 500


class VersionRecord(BaseModel):
    """One published, immutable adapter version: the store's fields plus the publisher's metadata, as given.

    Unknown metadata keys are kept (``extra="allow"``) and come back in ``model_dump()``.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    version: int = Field(..., ge=1, description="1, 2, … per task; never reused, even after a delete")
    task: str
    sha256: str = Field(..., description="sha256 of the artifact bytes (the blob key and the HTTP ETag)")
    size: int = Field(..., ge=0, description="artifact size in bytes")
    created_at: datetime = Field(..., description="when this version was published (UTC)")
    method: str | None = None
    trainable_params: int | None = None
    num_classes: int | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    backbone: str | None = None
    backbone_sha256: str | None = None
    labels: list[str] | None = None


class TaskSummary(BaseModel):
    """A task as ``GET /adapters`` lists it: its pointers and the record of the current version."""

    model_config = ConfigDict(frozen=True)

    task: str
    version: int = Field(..., description="the current version (what a request without ?version= gets)")
    latest_version: int = Field(..., description="the highest version ever published (rollback can lag it)")
    num_versions: int
    created_at: datetime
    updated_at: datetime
    current: VersionRecord


class TaskPage(BaseModel):
    """One page of the task index (``GET /adapters?limit=``): summaries in name order and where to go on."""

    model_config = ConfigDict(frozen=True)

    tasks: list[TaskSummary]
    total: int = Field(..., description="names in the index matching the prefix (before any method filter)")
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next page; null on the last")


def utc_now() -> str:
    """An ISO-8601 UTC timestamp; the publisher's clock, which is good enough for display and ordering hints."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def record_body(task: str, sha256: str, size: int, created_at: str, meta: Mapping[str, Any]) -> str:
    """The JSON of a version record without its ``version`` (the Lua publish script prepends it).

    The store's own fields come first so that they win over same-named metadata keys.
    """
    if not isinstance(meta, Mapping):
        raise InvalidRequest(f"adapter metadata must be a JSON object, not {type(meta).__name__}")
    body: dict[str, Any] = {"task": task, "sha256": sha256, "size": size, "created_at": created_at}
    for key, value in meta.items():
        if not isinstance(key, str):
            raise InvalidRequest(f"adapter metadata keys must be strings, not {key!r}")
        if key not in STORE_FIELDS:
            body[key] = value
    try:
        text = json.dumps(body, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise InvalidRequest(f"adapter metadata is not JSON-serialisable: {e}") from e
    if len(text.encode()) > MAX_META_BYTES:
        raise InvalidRequest(f"adapter metadata is larger than {MAX_META_BYTES} bytes as JSON")
    # validate the record as readers will parse it, so a bad field (metrics as a list, say) is refused here
    # instead of making every later read of the task fail
    try:
        VersionRecord.model_validate_json('{"version":1,' + text[1:])
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidRequest(f"adapter metadata field {where!r}: {first['msg']}") from e
    return text


def parse_record(raw: bytes | str) -> VersionRecord:
    """A stored version record; a corrupt one is a :class:`StoreError`, never a crash with a raw traceback."""
    try:
        return VersionRecord.model_validate_json(raw)
    except ValidationError as e:
        raise StoreError(f"corrupt version record in Redis: {e.errors()[:1]}") from e


def parse_int(raw: bytes | str | int | None) -> int | None:
    """A Redis integer reply or bulk string, or ``None`` for a missing field."""
    if raw is None:
        return None
    return int(raw)


def parse_summary(row: list[Any]) -> TaskSummary:
    """One row of the list-tasks script: ``[task, current, latest, created_at, updated_at, record, n]``."""
    task, current, latest, created, updated, record, count = row
    if record is None:
        raise StoreError(f"task {_text(task)!r} points at version {_text(current)} whose record is missing")
    return TaskSummary(
        task=_text(task),
        version=int(current),
        latest_version=int(latest),
        num_versions=int(count),
        created_at=_text(created),
        updated_at=_text(updated),
        current=parse_record(record),
    )


def parse_event(raw: bytes | str) -> dict[str, Any] | None:
    """A message from the events channel, or ``None`` if it is not one of ours (logged by the caller)."""
    try:
        event = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(event, dict) or not isinstance(event.get("task"), str) or "event" not in event:
        return None
    return event


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw
