"""Request context (pure ASGI, so streamed bodies stay streamed): ``X-Request-ID`` on every response (propagated
when the client sent a sane one, generated otherwise), per-route request metrics, and the last-resort 500 for
exceptions no handler took (logged with the request id)."""

from __future__ import annotations

import logging
import re
import time
import uuid
from urllib.parse import urlsplit

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import error_response, internal_error_response
from server.metrics import Metrics

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
# A client's id is echoed into logs and headers: only short, printable, header-safe ids are taken as they are.
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _REQUEST_ID_RE.fullmatch(text) else None
    return None


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = int(message["status"])
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("unhandled error in %s %s (request %s)", scope.get("method"), scope["path"], request_id)
            if not response_started:
                await internal_error_response()(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(template, str(scope.get("method", "")), status, time.perf_counter() - started)


# ------------------------------------------------------------------------------------------ loopback guard
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Fetch-metadata values a browser sends for a request the user made on this origin or typed in themselves.
_SAME_ORIGIN_FETCH = frozenset({"same-origin", "none"})


def host_name(value: str) -> str:
    """The host part of a ``Host`` header or a netloc, lower-cased: ``[::1]:8000`` → ``::1``."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else ""
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class LoopbackGuardMiddleware:
    """What stands in for the admin token on a loopback server that has none (``vpetl up``).

    A loopback bind alone does not stop a web page in the user's browser from reaching the API:

    - **DNS rebinding** (``evil.example`` re-resolved to 127.0.0.1) is refused by the ``Host`` check: only
      ``localhost``, ``127.0.0.1``, ``[::1]`` and the bound host are served (400 ``invalid_host``);
    - **cross-site writes** (a form or ``fetch(..., {mode: "no-cors"})`` POSTing to 127.0.0.1, which needs no
      CORS preflight) are refused by an ``Origin`` check on every state-changing method: a browser sends ``Origin``
      on every POST/PUT/DELETE, so one that is present must be this very origin (``null`` is refused too), and a
      ``Sec-Fetch-Site`` other than ``same-origin``/``none`` is refused (403 ``cross_origin_refused``). Clients
      that are not browsers (the SDK, curl) send neither header and are unaffected: no custom header is required.

    With an admin token configured this middleware is not installed: a browser cannot attach the bearer token to
    a cross-site request without a preflight that this server never grants.
    """

    def __init__(self, app: ASGIApp, bound_host: str) -> None:
        self.app = app
        self.trusted = LOOPBACK_HOSTS | {host_name(bound_host)}

    def _refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        host = _header(scope, b"host")
        if host is None or host_name(host) not in self.trusted:
            return 400, "invalid_host", (
                f"Host {(host or '')[:100]!r} is not served: a server without an admin token answers only "
                f"{', '.join(sorted(self.trusted))} (DNS-rebinding protection)"
            )  # fmt: skip
        if scope.get("method", "GET") in _SAFE_METHODS:
            return None
        origin = _header(scope, b"origin")
        if origin is not None:
            parts = urlsplit(origin.strip())
            if parts.netloc.lower() != host.strip().lower() or host_name(parts.netloc) not in self.trusted:
                return 403, "cross_origin_refused", (
                    f"a write from origin {origin[:100]!r} is refused: a server without an admin token accepts "
                    "writes only from non-browser clients or its own origin"
                )  # fmt: skip
        fetch_site = _header(scope, b"sec-fetch-site")
        if fetch_site is not None and fetch_site.strip().lower() not in _SAME_ORIGIN_FETCH:
            return 403, "cross_origin_refused", f"a {fetch_site[:20]!r} browser write is refused (no admin token)"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self._refusal(scope) if scope["type"] == "http" else None
        if refusal is None:
            await self.app(scope, receive, send)
            return
        # answered before routing and before any byte of the body is read
        await error_response(*refusal)(scope, receive, send)
