"""Scoped API keys, per-key limits and the audit trail, in Redis (torch-free; key layout in ``vpetl.store.keys``).

A key is ``vpk_<id>_<secret>``: the 12-hex-digit ``id`` is public (it is how a key is listed, shown in the audit
trail and revoked), the secret is 32 random bytes. Redis holds only the sha256 of the whole token, so a dump of
Redis does not let anyone call the API; the token is shown once, when the key is created.

What a key may do is its **scopes** (:data:`SCOPES`) and its **task patterns** (``site-12-*``: ``*`` is the only
wildcard). Limits are optional per key: requests per second (a token bucket in Redis, shared by every replica),
upload bytes per UTC day, training jobs per UTC hour.

Every key change is one MULTI/EXEC on ``{auth}`` (the record and a generation counter) followed by a PUBLISH of
the key id: servers reload their key cache on the event, and a periodic check of the generation covers a missed
event (the adapter pointers' scheme, ``server/pointers.py``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, Field

from vpetl.errors import InvalidRequest, VpetlError
from vpetl.store import keys as k
from vpetl.store.clients import AsyncClient, SyncClient

SCOPES = ("predict", "read", "upload", "train", "publish", "admin")
TOKEN_PREFIX = "vpk_"
TOKEN_RE = re.compile(r"^vpk_([0-9a-f]{12})_[A-Za-z0-9_-]{43}$")
# task patterns: the task-name alphabet plus '*'; fnmatch's other wildcards ('?', '[') cannot appear
PATTERN_RE = re.compile(r"^[a-z0-9*][a-z0-9_.*-]{0,63}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.@:-]{0,63}$")
AUDIT_MAX_LEN = 100_000


class UnknownKey(VpetlError):
    code = "unknown_key"
    http_status = 404


class KeyRecord(BaseModel):
    """One API key as stored (``secret_sha256`` never leaves the server: :meth:`public` drops it)."""

    id: str
    name: str
    secret_sha256: str
    scopes: list[str]
    tasks: list[str] = Field(default_factory=lambda: ["*"])
    rps: float | None = Field(None, description="requests per second (token bucket refill rate)")
    burst: int | None = Field(None, description="token bucket size (default: max(1, 2 * rps))")
    upload_mb_per_day: float | None = None
    jobs_per_hour: int | None = None
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None

    @property
    def prefix(self) -> str:
        """What identifies the key in listings and the audit trail (the token starts with it)."""
        return f"{TOKEN_PREFIX}{self.id}"

    def state(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def public(self, now: float | None = None) -> dict[str, Any]:
        out = self.model_dump(exclude={"secret_sha256"})
        return {**out, "prefix": self.prefix, "state": self.state(now)}


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def parse_token(token: str) -> str | None:
    """The key id of a well-formed key token, else None (not a key: maybe the bootstrap admin token)."""
    match = TOKEN_RE.fullmatch(token)
    return match.group(1) if match else None


def matches(patterns: Iterable[str], task: str) -> bool:
    return any(fnmatch.fnmatchcase(task, pattern) for pattern in patterns)


def check_scopes(scopes: Iterable[str]) -> list[str]:
    out = sorted(set(scopes))
    bad = [s for s in out if s not in SCOPES]
    if bad or not out:
        raise InvalidRequest(f"scopes must be a non-empty subset of {', '.join(SCOPES)} (got {', '.join(bad)})")
    return out


def check_patterns(patterns: Iterable[str]) -> list[str]:
    out = sorted(set(patterns))
    bad = [p for p in out if not PATTERN_RE.fullmatch(p)]
    if bad or not out:
        raise InvalidRequest(f"task patterns: one or more of ^[a-z0-9*][a-z0-9_.*-]{{0,63}}$ (got {bad[:3]!r})")
    return out


def _limit(value: float | int | None, name: str) -> None:
    if value is not None and not value > 0:
        raise InvalidRequest(f"{name} must be > 0 (omit it for no limit)")


def new_key(
    name: str,
    scopes: Iterable[str],
    tasks: Iterable[str] = ("*",),
    *,
    expires_in_s: float | None = None,
    rps: float | None = None,
    burst: int | None = None,
    upload_mb_per_day: float | None = None,
    jobs_per_hour: int | None = None,
    now: float | None = None,
) -> tuple[str, KeyRecord]:
    """A fresh (token, record): validated, not stored yet."""
    if not NAME_RE.fullmatch(name):
        raise InvalidRequest("key name: 1-64 of [A-Za-z0-9 _.@:-], starting with a letter or digit")
    for value, what in ((expires_in_s, "expires_in_s"), (rps, "rps"), (burst, "burst"),
                        (upload_mb_per_day, "upload_mb_per_day"), (jobs_per_hour, "jobs_per_hour")):  # fmt: skip
        _limit(value, what)
    now = time.time() if now is None else now
    key_id = secrets.token_hex(6)
    token = f"{TOKEN_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    record = KeyRecord(
        id=key_id, name=name, secret_sha256=token_sha256(token), scopes=check_scopes(scopes),
        tasks=check_patterns(tasks), rps=rps, burst=burst, upload_mb_per_day=upload_mb_per_day,
        jobs_per_hour=jobs_per_hour, created_at=round(now, 3),
        expires_at=None if expires_in_s is None else round(now + expires_in_s, 3),
    )  # fmt: skip
    return token, record


def decode_records(raw: Mapping[bytes | str, bytes | str]) -> dict[str, KeyRecord]:
    out = {}
    for field, value in raw.items():
        record = KeyRecord.model_validate_json(value)
        out[field.decode() if isinstance(field, bytes) else field] = record
    return out


class ApiKeyStore:
    """Key management (CLI, ``/keys``, tests): blocking client; the servers' hot path reads :func:`load_keys`."""

    def __init__(self, client: SyncClient) -> None:
        self.redis = client

    def _write(self, record: KeyRecord) -> None:
        pipe = self.redis.pipeline(transaction=True)  # one slot ({auth}): record and generation together
        pipe.hset(k.API_KEYS, record.id, record.model_dump_json())
        pipe.incr(k.API_KEYS_GENERATION)
        pipe.execute()
        # after the write, so a server reloading on the event reads the new record
        self.redis.publish(k.API_KEYS_EVENTS, record.id)

    def _audit(self, actor: str | None, method: str, record: KeyRecord) -> None:
        # the HTTP routes are audited by the server's middleware (actor None); the CLI, which talks to Redis
        # directly, names itself here
        if actor is not None:
            entry = {"ts": round(time.time(), 3), "key": actor, "method": method, "route": "/keys",
                     "path": f"/keys/{record.id}", "task": "", "status": 200, "request_id": ""}  # fmt: skip
            self.redis.xadd(k.AUDIT_STREAM, entry, maxlen=AUDIT_MAX_LEN, approximate=True)

    def create(
        self, name: str, scopes: Iterable[str], tasks: Iterable[str] = ("*",), *, actor: str | None = None,
        **limits: Any,
    ) -> tuple[str, KeyRecord]:  # fmt: skip
        """Store a new key; returns the token (shown once) and the record."""
        token, record = new_key(name, scopes, tasks, **limits)
        self._write(record)
        self._audit(actor, "POST", record)
        return token, record

    def get(self, key_id: str) -> KeyRecord:
        raw = self.redis.hget(k.API_KEYS, key_id) if k.KEY_ID_RE.fullmatch(key_id) else None
        if raw is None:
            raise UnknownKey(f"no API key {key_id[:20]!r}")
        return KeyRecord.model_validate_json(raw)

    def list(self) -> list[KeyRecord]:
        return sorted(decode_records(self.redis.hgetall(k.API_KEYS)).values(), key=lambda r: r.created_at)

    def revoke(self, key_id: str, *, actor: str | None = None) -> KeyRecord:
        """Mark the key revoked (the record stays for listings and the audit trail); idempotent."""
        key_id = key_id.removeprefix(TOKEN_PREFIX)
        record = self.get(key_id)
        if record.revoked_at is None:
            record.revoked_at = round(time.time(), 3)
            self._write(record)
            self._audit(actor, "DELETE", record)
        return record

    def audit(self, count: int = 100, task: str | None = None) -> list[dict[str, Any]]:
        return _audit_entries(self.redis.xrevrange(k.AUDIT_STREAM, count=count), task)


async def load_keys(client: AsyncClient) -> tuple[int, dict[str, KeyRecord]]:
    """(generation, every key record): what a server's key cache holds."""
    pipe = client.pipeline(transaction=False)
    pipe.get(k.API_KEYS_GENERATION)
    pipe.hgetall(k.API_KEYS)
    generation, raw = await pipe.execute()
    return int(generation or 0), decode_records(raw)


async def generation(client: AsyncClient) -> int:
    return int(await client.get(k.API_KEYS_GENERATION) or 0)


# KEYS: bucket. ARGV: rate (tokens/s), burst. Reply: '0' when a token was taken, else seconds until one is there.
# Redis's own clock (TIME), so replicas with skewed clocks share one bucket correctly.
TOKEN_BUCKET = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(b[1]) or burst, tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = '0'
if tokens >= 1 then tokens = tokens - 1 else wait = tostring((1 - tokens) / rate) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return wait
"""

# KEYS: counter. ARGV: amount, limit, ttl. Reply: {1, new total} when it fits (and is counted), {0, total} when not.
QUOTA = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local n, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
if cur + n > limit then return {0, cur} end
redis.call('INCRBY', KEYS[1], n)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return {1, cur + n}
"""


class Limits:
    """The per-key limit scripts on the server's async client (registered once)."""

    def __init__(self, client: AsyncClient) -> None:
        self.redis = client
        self._bucket = client.register_script(TOKEN_BUCKET)
        self._quota = client.register_script(QUOTA)

    async def take(self, record: KeyRecord) -> float:
        """Take one request token; 0.0 when allowed, else seconds until the next token."""
        assert record.rps is not None
        burst = record.burst or max(1, int(2 * record.rps))
        wait = await self._bucket(keys=[k.key_bucket_key(record.id)], args=[record.rps, burst])
        return float(wait)

    async def count(self, counter: str, amount: int, limit: float, ttl_s: int) -> bool:
        """Add ``amount`` to ``counter`` if the total stays within ``limit``; whether it did."""
        ok, _ = await self._quota(keys=[counter], args=[amount, int(limit), ttl_s])
        return bool(ok)

    async def refund(self, counter: str, amount: int) -> None:
        await self.redis.decrby(counter, amount)

    async def audit(self, entry: Mapping[str, str | int | float], max_len: int = AUDIT_MAX_LEN) -> None:
        # MAXLEN ~: trimmed in whole macro-nodes, so the stream stays near max_len at O(1) cost per append
        await self.redis.xadd(k.AUDIT_STREAM, dict(entry), maxlen=max_len, approximate=True)


def _audit_entries(raw: list[tuple[Any, Mapping[Any, Any]]], task: str | None) -> list[dict[str, Any]]:
    out = []
    for entry_id, fields in raw:
        item = {_s(a): _s(b) for a, b in fields.items()}
        if task is not None and item.get("task") != task:
            continue
        item["id"] = _s(entry_id)
        for name in ("status", "ts"):
            if name in item:
                item[name] = json.loads(item[name])
        out.append(item)
    return out


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
