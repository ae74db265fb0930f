"""Who is calling, and what they may do: the bootstrap admin token and scoped API keys (``vpetl.store.apikeys``).

:class:`AuthMiddleware` (pure ASGI, before routing and before any byte of a body is read) turns the
``Authorization`` header into a :class:`Principal`, applies the key's requests-per-second bucket, and appends every
state change to the audit stream. The routes then ask the principal for a scope (``server.deps.require``: 403
``insufficient_scope``) and for each task they touch (a task outside the key's patterns is answered 404 as if it
did not exist).

**Open mode**: no admin token and no key in Redis. Every request is the :data:`OPEN` principal (every scope); the
server binds loopback only and ``LoopbackGuardMiddleware`` keeps browsers' pages out. Once a token or any key is
configured, every route outside :func:`is_public` needs one: no credentials → 401.

The key cache is the pointer cache's scheme (``server/pointers.py``): every record is held in this process (the
check costs no Redis round trip), a listener on ``vpetl:{auth}:events`` reloads it on a key change, and a periodic
check of the generation counter (``key_check_s``) covers events missed while the subscription was down. A
revocation therefore reaches every replica — local engine or Ray ingress — within ``key_check_s`` at worst.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from dataclasses import dataclass, field

import redis
import redis.asyncio.cluster
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.background import start_background, stop_background
from server.errors import RETRY_AFTER_S, error_response, vpetl_error_response
from server.settings import Settings
from vpetl.errors import (
    Forbidden,
    InsufficientScope,
    KeyExpired,
    KeyRevoked,
    QuotaExceeded,
    RateLimited,
    Unauthorized,
    VpetlError,
)
from vpetl.store import keys as k
from vpetl.store.apikeys import SCOPES, KeyRecord, Limits, load_keys, matches, parse_token, token_sha256
from vpetl.store.clients import AsyncClient

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------- the allow-list
# Paths served without a key whatever is configured. Keep this the only list: the web console (/ui, its static
# files) is a page that asks the user for a key itself, and the probes must answer an orchestrator that has none.
# /docs and /openapi.json describe the API (the same for every deployment) and hold no tenant data.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
PUBLIC_PREFIXES = ("/ui", "/static/")
METRICS_PATH = "/metrics"
# Requests that change nothing are not audited; /predict is a read of the model (and would flood the stream).
_AUDITED_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_NOT_AUDITED = frozenset({"/predict"})
_DUMMY_SHA256 = "0" * 64


def is_public(path: str, settings: Settings) -> bool:
    if path in PUBLIC_PATHS or (path == METRICS_PATH and settings.metrics_public):
        return True
    return any(path == p or path.startswith(p + "/") or (p.endswith("/") and path.startswith(p))
               for p in PUBLIC_PREFIXES)  # fmt: skip


@dataclass(frozen=True)
class Principal:
    """The caller: ``open`` (no auth configured), ``admin`` (the bootstrap token) or ``key``."""

    kind: str
    scopes: frozenset[str]
    tasks: tuple[str, ...] = ("*",)
    record: KeyRecord | None = None

    @property
    def label(self) -> str:
        """How the audit trail names the caller: the key's prefix, never its secret."""
        return self.record.prefix if self.record is not None else self.kind

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    def sees(self, task: str) -> bool:
        return matches(self.tasks, task)

    @property
    def sees_all(self) -> bool:
        return "*" in self.tasks

    def require(self, scope: str) -> None:
        if not self.allows(scope):
            raise InsufficientScope(
                f"this route needs the {scope!r} scope; key {self.label} has {', '.join(sorted(self.scopes))}"
            )


OPEN = Principal("open", frozenset(SCOPES))
ADMIN = Principal("admin", frozenset(SCOPES))


@dataclass
class KeyCache:
    """Every API key record, kept fresh from Redis (events + periodic generation check)."""

    client: AsyncClient
    check_s: float = 0.5
    records: dict[str, KeyRecord] = field(default_factory=dict)
    generation: int | None = None  # None: never loaded
    _background: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        with contextlib.suppress(redis.RedisError, OSError):
            await self.reload()  # Redis away at start: loaded on the first request (or the first check)
        self._background = start_background(
            {"vpetl-key-events": self._watch_events(), "vpetl-key-check": self._check()}
        )

    async def stop(self) -> None:
        await stop_background(self._background)
        self._background = []

    async def reload(self) -> None:
        self.generation, self.records = await load_keys(self.client)

    async def ensure_loaded(self) -> None:
        if self.generation is None:
            await self.reload()  # a Redis error here answers 503: auth state unknown, nobody gets in unchecked

    async def fetch(self, key_id: str) -> KeyRecord | None:
        """A key this cache has not heard of yet (created a moment ago elsewhere): read it directly."""
        raw = await self.client.hget(k.API_KEYS, key_id)
        if raw is None:
            return None
        record = KeyRecord.model_validate_json(raw)
        self.records[key_id] = record
        return record

    async def _watch_events(self) -> None:
        while True:
            try:
                if isinstance(self.client, redis.asyncio.cluster.RedisCluster):
                    await self.client.initialize()  # the cluster pub/sub picks its node from the slot map
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                try:
                    await pubsub.subscribe(k.API_KEYS_EVENTS)
                    await self.reload()  # anything changed while unsubscribed
                    while True:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                        if message is not None and message.get("type") == "message":
                            await self.reload()
                finally:
                    await pubsub.aclose()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis restarted: resubscribe; the periodic check keeps revocations in time
                logger.warning("API key event subscription lost (%s); retrying", e)
                await asyncio.sleep(0.5)

    async def _check(self) -> None:
        while True:
            await asyncio.sleep(self.check_s)
            try:
                current = int(await self.client.get(k.API_KEYS_GENERATION) or 0)
                if current != self.generation:
                    await self.reload()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.debug("API key check failed: %s", e)


class Authenticator:
    """The per-request check: header → :class:`Principal` (constant-time comparisons, no Redis round trip for a
    cached key), plus the key's limits and the audit trail."""

    def __init__(self, settings: Settings, client: AsyncClient) -> None:
        self.settings = settings
        self.admin_token = (settings.admin_token or "").encode("utf-8")
        self.cache = KeyCache(client, settings.key_check_s)
        self.limits = Limits(client)

    async def start(self) -> None:
        await self.cache.start()

    async def stop(self) -> None:
        await self.cache.stop()

    @property
    def required(self) -> bool:
        """Whether credentials are needed: an admin token, or any key record (revoked ones too: a deployment
        that had keys never falls back to open mode by revoking them all)."""
        return bool(self.admin_token) or bool(self.cache.records)

    async def authenticate(self, header: str | None) -> Principal:
        if not self.admin_token:
            await self.cache.ensure_loaded()
        if not self.required:
            return OPEN  # open mode: loopback only (Settings.check_bind) behind the loopback guard
        scheme, _, token = (header or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("this server needs an API key: send Authorization: Bearer <key>")
        key_id = parse_token(token)
        if key_id is None:
            # constant-time comparison: response timing must not reveal how much of a guess was right
            if self.admin_token and hmac.compare_digest(token.encode("utf-8", "surrogateescape"), self.admin_token):
                return ADMIN
            raise Forbidden("the token is not valid")
        record = self.cache.records.get(key_id)
        if record is None and self.cache.generation is not None:
            record = await self.cache.fetch(key_id)
        # the digest is compared even for an unknown id, so both cost the same
        expected = record.secret_sha256 if record is not None else _DUMMY_SHA256
        if not hmac.compare_digest(token_sha256(token), expected) or record is None:
            raise Forbidden("the API key is not valid")
        state = record.state()
        if state == "revoked":
            raise KeyRevoked(f"API key {record.prefix} was revoked")
        if state == "expired":
            raise KeyExpired(f"API key {record.prefix} has expired")
        return Principal("key", frozenset(record.scopes), tuple(record.tasks), record)

    async def throttle(self, principal: Principal) -> None:
        """The key's requests-per-second bucket (shared by every replica through Redis)."""
        record = principal.record
        if record is None or record.rps is None:
            return
        wait = await self.limits.take(record)
        if wait > 0:
            raise RateLimited(f"API key {record.prefix} is over {record.rps:g} requests/s", retry_after_s=wait)

    async def audit(self, scope: Scope, principal: Principal, status: int) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        state = scope.get("state", {})
        task = scope.get("path_params", {}).get("task") or state.get("audit_task") or ""
        entry = {
            "ts": round(time.time(), 3), "key": principal.label, "method": str(scope.get("method", "")),
            "route": route, "path": str(state.get("audit_path") or scope.get("path", ""))[:200], "task": task,
            "status": status,
            "request_id": str(state.get("request_id", "")),
        }  # fmt: skip
        await self.limits.audit(entry, self.settings.audit_max_len)


DAY_S, HOUR_S = 86_400, 3_600


async def charge_quota(auth: Authenticator, caller: Principal, kind: str, amount: int) -> str | None:
    """Count ``amount`` against the key's ``upload`` (bytes per UTC day) or ``jobs`` (per UTC hour) quota: 429
    ``quota_exceeded`` with ``Retry-After`` (the start of the next period) when it does not fit. Returns the
    counter charged (for :meth:`Limits.refund` when the request then fails), None when the caller has no quota."""
    record = caller.record
    if record is None:
        return None
    now = time.time()
    if kind == "upload":
        if record.upload_mb_per_day is None:
            return None
        period, limit = DAY_S, record.upload_mb_per_day * 1024 * 1024
        counter, what = k.key_upload_key(record.id, int(now // DAY_S)), f"{record.upload_mb_per_day:g} MiB/day"
    else:
        if record.jobs_per_hour is None:
            return None
        period, limit = HOUR_S, float(record.jobs_per_hour)
        counter, what = k.key_jobs_key(record.id, int(now // HOUR_S)), f"{record.jobs_per_hour} training jobs/hour"
    if not await auth.limits.count(counter, amount, limit, 2 * period):
        raise QuotaExceeded(
            f"API key {record.prefix} is over its quota of {what}", retry_after_s=period - now % period
        )
    return counter


class AuthMiddleware:
    """Authenticate every request outside the allow-list; throttle keys; audit state changes."""

    def __init__(self, app: ASGIApp, auth: Authenticator) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope["path"], self.auth.settings):
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for n, v in scope.get("headers", ()) if n == b"authorization"), None)
        try:
            principal = await self.auth.authenticate(header)
            await self.auth.throttle(principal)
        except VpetlError as e:
            await vpetl_error_response(e)(scope, receive, send)
            return
        except (redis.RedisError, OSError) as e:  # the key state is unknown: refuse rather than guess
            logger.warning("API key check: Redis unavailable: %s", e)
            await error_response(503, "store_unavailable", "the key store (Redis) is unreachable; retry shortly",
                                 {"Retry-After": str(RETRY_AFTER_S)})(scope, receive, send)  # fmt: skip
            return
        scope.setdefault("state", {})["principal"] = principal
        method = str(scope.get("method", ""))
        if method not in _AUDITED_METHODS or scope["path"] in _NOT_AUDITED:
            await self.app(scope, receive, send)
            return

        async def send_audited(message: Message) -> None:
            if message["type"] == "http.response.start":
                # appended before the response leaves: a client that saw the answer finds the entry
                try:
                    await self.auth.audit(scope, principal, int(message["status"]))
                except Exception as e:  # the change itself is done; losing its entry must not turn it into a 500
                    logger.error("audit entry not written (%s %s): %s", method, scope["path"], e)
            await send(message)

        await self.app(scope, receive, send_audited)
