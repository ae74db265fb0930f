"""Training jobs on a Redis stream with a consumer group (``vpetl:{jobs}:stream``, group ``workers``).

- ``submit`` writes the job record (``vpetl:{jobs}:job:<id>`` hash: state, params, progress, result) and then XADDs
  its id, in one MULTI/EXEC: every job key shares the ``{jobs}`` hash tag, so this works on Redis Cluster too;
- a worker reads with XREADGROUP and ``begin``s the job (one Lua script: skip it if it is already terminal, give it
  up if it has used its attempts, else count an attempt and mark it running); while the job runs the worker's
  heartbeat thread keeps the pending entry fresh (``heartbeat``, every ``claim_idle_ms / 3``), independently of
  training progress; it ends with ``finish`` — the terminal state and the XACK in one MULTI/EXEC, after the
  adapter is published;
- a worker that dies mid-job stops heartbeating, so its entry goes idle; another worker takes it over with
  XAUTOCLAIM once it has been idle for ``claim_idle_ms``. After ``max_attempts`` starts that all ended with a dead
  worker the job is ``failed`` with a clear error, copied to the dead-letter stream ``vpetl:{jobs}:deadletter``
  (its entry id in the record's ``dead_letter``) and acknowledged: a job that kills its worker is not retried
  forever. A redelivered job that already succeeded or failed is acknowledged and skipped;
- the worker publishes with its job id, so even a job that runs twice (it died after publishing, before
  ``finish``) makes one adapter version (``AdapterStore.publish(job_id=…)``).

Why a Redis stream and not rq / Dramatiq / arq: Redis is already the one shared dependency of every process
(adapters, clips, events), and a consumer group gives exactly what these jobs need — at-least-once delivery with
takeover of a dead consumer's entry — in a few commands that also run on Redis Cluster, without a second
broker protocol, its own worker runtime (forking, which a process holding a loaded backbone and torch threads
should not do) or its own job records beside ours.
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
from vpetl.store.keys import JOB_DEAD_LETTER, JOB_INDEX, JOB_STREAM, job_key

STREAM = JOB_STREAM
GROUP = "workers"
INDEX = JOB_INDEX
DEAD_LETTER = JOB_DEAD_LETTER
STATES = ("queued", "running", "succeeded", "failed")
TERMINAL = ("succeeded", "failed")
MAX_ATTEMPTS = 3

# KEYS: job record, stream, dead-letter stream. ARGV: group, entry id, consumer, now, max attempts, job id.
# Reply: {'run', attempt} | {'done', state} | {'dead', dead-letter entry id} | {'missing'}.
# One script, so two workers that race for a redelivered entry cannot both count the same attempt, and a give-up
# writes the failed state, the dead letter and the ack together.
_BEGIN = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
  return {'missing'}
end
if state == 'succeeded' or state == 'failed' then
  -- a redelivery of a finished job (its worker died between finishing and acking, or it was retried by hand)
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
  return {'done', state}
end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
if attempts >= tonumber(ARGV[5]) then
  -- every attempt so far ended with its worker gone (only a dead worker leaves a started job unfinished)
  local last = redis.call('HGET', KEYS[1], 'worker') or '?'
  local err = '[max_attempts] gave up after ' .. attempts .. ' attempt(s): each time, the worker running this job '
    .. 'stopped before finishing it (killed, out of memory, or crashed; last worker ' .. last .. '). '
    .. 'See the log of that worker; the job is in the dead-letter stream ' .. KEYS[3]
  local dl = redis.call('XADD', KEYS[3], '*', 'job_id', ARGV[6], 'error', err, 'attempts', attempts,
                        'worker', last, 'entry', ARGV[2], 'at', ARGV[4])
  redis.call('HSET', KEYS[1], 'state', 'failed', 'error', err, 'dead_letter', dl, 'finished_at', ARGV[4],
             'updated_at', ARGV[4])
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
  return {'dead', dl}
end
attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[3], 'started_at', ARGV[4], 'updated_at', ARGV[4])
return {'run', attempts}
"""

# KEYS: stream. ARGV: group, entry id, consumer. Reply: 1 if the entry is still this consumer's (its idle time is
# now reset), 0 if it was acked or another consumer took it over — a plain XCLAIM would steal it back instead.
_HEARTBEAT = """
local mine = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1, ARGV[3])
if #mine == 0 then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return 1
"""


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
        self._begin = client.register_script(_BEGIN)
        self._heartbeat = client.register_script(_HEARTBEAT)

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

    def begin(
        self, entry_id: str, job_id: str, consumer: str, *, max_attempts: int = MAX_ATTEMPTS
    ) -> tuple[str, dict[str, Any] | None]:
        """Decide what to do with a claimed entry, atomically: ``("run", job)`` — an attempt is counted and the job
        is running under ``consumer``; ``("done", job)`` — it had already finished, the entry is acked; ``("dead",
        job)`` — it used up ``max_attempts`` (each ended with a dead worker): now ``failed``, dead-lettered, acked;
        ``("missing", None)`` — no record (expired or deleted), acked."""
        if max_attempts < 1:
            raise InvalidRequest(f"max_attempts must be >= 1, not {max_attempts}")
        keys = (job_key(job_id), STREAM, DEAD_LETTER)
        reply = self._begin(keys=keys, args=(GROUP, entry_id, consumer, _now(), max_attempts, job_id))
        outcome = _s(reply[0])
        return outcome, (None if outcome == "missing" else self.get(job_id))

    def heartbeat(self, entry_id: str, consumer: str) -> bool:
        """Reset the entry's idle time if ``consumer`` still owns it (so XAUTOCLAIM leaves a live worker's job
        alone); False when it no longer does (acked, or taken over after this worker stalled past the timeout)."""
        return bool(self._heartbeat(keys=(STREAM,), args=(GROUP, entry_id, consumer)))

    def update(self, job_id: str, **fields: Any) -> None:
        self.redis.hset(job_key(job_id), mapping=_mapping(fields))

    def finish(self, job_id: str, entry_id: str, state: str, **fields: Any) -> None:
        """Record the terminal ``state`` (with result / error / version …) and ack the entry, in one MULTI/EXEC
        on the ``{jobs}`` slot: a redelivery then always finds the job terminal and skips it."""
        if state not in TERMINAL:
            raise ValueError(f"finish() takes a terminal state {TERMINAL}, not {state!r}")
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(job_key(job_id), mapping=_mapping({**fields, "state": state, "finished_at": _now()}))
        pipe.xack(STREAM, GROUP, entry_id)
        pipe.execute()

    def start(self, job_id: str, consumer: str) -> dict[str, Any]:
        """Count an attempt and mark the job running, unconditionally (tests and tools; workers use :meth:`begin`)."""
        self.redis.hincrby(job_key(job_id), "attempts", 1)
        self.update(job_id, state="running", worker=consumer, started_at=_now())
        return self.get(job_id)

    def dead_letters(self, count: int = 100) -> list[dict[str, Any]]:
        """The most recent dead-lettered jobs, newest first: ``{"id", "job_id", "error", "attempts", "worker", …}``."""
        rows = self.redis.xrevrange(DEAD_LETTER, count=count)
        return [{"id": _s(entry_id), **{_s(k): _s(v) for k, v in fields.items()}} for entry_id, fields in rows]


def _mapping(fields: Mapping[str, Any]) -> dict[str, Any]:
    mapping = {k: (json.dumps(v) if isinstance(v, dict | list) else v) for k, v in fields.items() if v is not None}
    mapping["updated_at"] = _now()
    return mapping


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
