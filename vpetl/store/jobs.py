"""Training jobs on a Redis stream with a consumer group (``vpetl:{jobs}:stream``, group ``workers``).

- ``submit`` writes the job record (``vpetl:{jobs}:job:<id>`` hash: state, params, progress, result) and then XADDs
  its id, in one MULTI/EXEC: every job key shares the ``{jobs}`` hash tag, so this works on Redis Cluster too;
- a worker reads with XREADGROUP, marks the job running, reports progress into the record, and XACKs LAST — after
  the adapter is published (or the job has failed for good);
- a worker that dies mid-job leaves the entry pending; another worker takes it over with XAUTOCLAIM once it has
  been idle for ``claim_idle_ms``. Publishing is one atomic store operation, so a dead worker never leaves a
  half-published adapter — at worst a job runs twice.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Mapping
from typing import Any

import redis

from vpetl.errors import InvalidRequest, VpetlError
from vpetl.protocol import is_valid_task_name
from vpetl.store.clients import SyncClient
from vpetl.store.keys import JOB_INDEX, JOB_STREAM, job_key

STREAM = JOB_STREAM
GROUP = "workers"
INDEX = JOB_INDEX
STATES = ("queued", "running", "succeeded", "failed")


JOB_DEFAULTS: dict[str, Any] = {
    "method": "bapat",
    "bottleneck": None,
    "scale": None,
    "epochs": 10,
    "batch_size": 8,
    "lr": None,
    "optimizer": "sgd",
    "seed": 0,
    "publish_if_worse": False,
}


def job_params(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a job request: known keys only, a valid task name; defaults filled in."""
    unknown = sorted(set(raw) - set(JOB_DEFAULTS) - {"task"})
    if unknown:
        raise InvalidRequest(f"unknown job option(s) {unknown}; valid: task, {', '.join(JOB_DEFAULTS)}")
    task = raw.get("task")
    if not isinstance(task, str) or not is_valid_task_name(task):
        raise InvalidRequest(f"invalid task name {task!r}: use ^[a-z0-9][a-z0-9_.-]{{0,63}}$")
    params = {**JOB_DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
    from vpetl.petl.registry import get_method

    if not get_method(str(params["method"])).servable:
        raise InvalidRequest(f"method {params['method']!r} does not produce a servable adapter")
    return params


class UnknownJob(VpetlError):
    code = "unknown_job"
    http_status = 404


def _now() -> float:
    return round(time.time(), 3)


class JobQueue:
    """Sync job queue (the server calls it from a worker thread; the training worker uses it directly)."""

    def __init__(self, client: SyncClient) -> None:
        self.redis = client

    # -------------------------------------------------------------------------------------------------- producer
    def submit(self, params: Mapping[str, Any]) -> str:
        job_id = uuid.uuid4().hex[:16]
        now = _now()
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(
            job_key(job_id),
            mapping={
                "id": job_id,
                "state": "queued",
                "params": json.dumps(dict(params), sort_keys=True),
                "created_at": now,
                "updated_at": now,
                "progress": "{}",
                "attempts": 0,
            },
        )
        pipe.zadd(INDEX, {job_id: now})
        pipe.xadd(STREAM, {"job_id": job_id})
        pipe.execute()
        return job_id

    def get(self, job_id: str) -> dict[str, Any]:
        if not job_id or not all(c in "0123456789abcdef" for c in job_id) or len(job_id) > 64:
            raise InvalidRequest(f"malformed job id {job_id!r}")
        raw = self.redis.hgetall(job_key(job_id))
        if not raw:
            raise UnknownJob(f"no job {job_id!r}")
        return _decode(raw)

    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        ids = self.redis.zrevrange(INDEX, 0, max(0, limit - 1))
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(job_key(job_id.decode() if isinstance(job_id, bytes) else job_id))
        return [_decode(raw) for raw in pipe.execute() if raw]

    # -------------------------------------------------------------------------------------------------- consumer
    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def claim_next(
        self, consumer: str, *, block_ms: int = 1000, claim_idle_ms: int = 60_000
    ) -> tuple[str, str] | None:
        """(entry id, job id) of a job to run: first one abandoned by a dead worker, else a new one."""
        self.ensure_group()
        _, claimed, *_ = self.redis.xautoclaim(STREAM, GROUP, consumer, min_idle_time=claim_idle_ms, count=1)
        entries = claimed
        if not entries:
            reply = self.redis.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=1, block=block_ms)
            entries = reply[0][1] if reply else []
        for entry_id, fields in entries:
            if not fields:  # trimmed entry
                self.redis.xack(STREAM, GROUP, entry_id)
                continue
            job_id = fields.get(b"job_id", fields.get("job_id"))
            return _s(entry_id), _s(job_id)
        return None

    def ack(self, entry_id: str) -> None:
        self.redis.xack(STREAM, GROUP, entry_id)

    def touch(self, entry_id: str, consumer: str) -> None:
        """Reset the entry's idle time (a long job keeps its claim: XCLAIM with min-idle 0 by the same consumer)."""
        self.redis.xclaim(STREAM, GROUP, consumer, 0, [entry_id], justid=True)

    def update(self, job_id: str, **fields: Any) -> None:
        mapping = {k: (json.dumps(v) if isinstance(v, dict | list) else v) for k, v in fields.items() if v is not None}
        mapping["updated_at"] = _now()
        self.redis.hset(job_key(job_id), mapping=mapping)

    def start(self, job_id: str, consumer: str) -> dict[str, Any]:
        self.redis.hincrby(job_key(job_id), "attempts", 1)
        self.update(job_id, state="running", worker=consumer, started_at=_now())
        return self.get(job_id)


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode(raw: Mapping[bytes | str, bytes | str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key, value = _s(k), _s(v)
        if key in ("params", "progress", "metrics", "result"):
            out[key] = json.loads(value) if value else {}
        elif key in ("created_at", "updated_at", "started_at", "finished_at"):
            out[key] = float(value)
        elif key in ("attempts", "version"):
            out[key] = int(value)
        else:
            out[key] = value
    return out
