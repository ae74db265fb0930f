"""The only place that turns errors into HTTP responses: ``{"error": {"code", "message"}}`` with a stable code.

- :class:`~vpetl.errors.VpetlError` → its own ``http_status`` and ``code`` (401 adds ``WWW-Authenticate: Bearer``,
  503 ``overloaded`` and 429 ``rate_limited`` / ``quota_exceeded`` add ``Retry-After``);
- FastAPI's request validation (bad query/path/body values) → 422 ``invalid_request``;
- Starlette's own HTTP errors (no such route, wrong method) → their status with ``not_found`` /
  ``method_not_allowed`` …;
- Redis unreachable (the store's client gave up retrying) → 503 ``store_unavailable`` with ``Retry-After``;
- anything else is a bug: logged with its traceback, answered 500 ``internal_error`` without details.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from vpetl.errors import Overloaded, RateLimited, Unauthorized, VpetlError
from vpetl.protocol import ErrorResponse

logger = logging.getLogger(__name__)

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
RETRY_AFTER_S = 1  # the queue drains in milliseconds; a client backing off one second finds room

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}


class NotReady(VpetlError):
    """Readiness failed (backbone not loaded or Redis unreachable)."""

    code = "not_ready"
    http_status = 503


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one builder of error bodies."""
    body = ErrorResponse.model_validate({"error": {"code": code, "message": message}})
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def vpetl_error_response(error: VpetlError) -> JSONResponse:
    headers: dict[str, str] = {}
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="vpetl"'
    if isinstance(error, Overloaded):
        headers["Retry-After"] = str(RETRY_AFTER_S)
    if isinstance(error, RateLimited):  # 429: when the key's bucket or quota has room again (whole seconds)
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
    return error_response(error.http_status, error.code, error.message, headers or None)


def internal_error_response() -> JSONResponse:
    """500 for a bug; the traceback is in the server log, never in the response."""
    return error_response(500, "internal_error", "internal server error (logged); please report it")


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


async def _on_vpetl_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, VpetlError)
    if exc.http_status >= 500 and not isinstance(exc, (Overloaded, NotReady)):
        logger.error("request %s failed: %s: %s", _request_id(request), exc.code, exc.message)
    return vpetl_error_response(exc)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, "invalid_request", _describe_validation(exc))


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    headers = dict(exc.headers) if exc.headers else {}
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route for {request.method} {request.url.path[:200]}; see /docs"
    if exc.status_code == 405:
        # Starlette's Allow names the methods of the first route whose path matched; one path is served by
        # several routes here (GET/PUT/DELETE /adapters/{task}), and RFC 9110 wants all of them
        allowed = allowed_methods(request)
        headers["Allow"] = ", ".join(allowed)
        message = f"{request.method} is not allowed on {request.url.path[:200]}; allowed: {headers['Allow']}"
    return error_response(exc.status_code, code, message, headers or None)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app fully matches on the request's path (asked of the routes themselves,
    through Starlette's ``matches``, so included routers and path converters count as they do when routing)."""
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


async def _on_redis_error(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("request %s: Redis unavailable: %s", _request_id(request), exc)
    return error_response(
        503, "store_unavailable", "the adapter store (Redis) is unreachable; retry shortly",
        {"Retry-After": str(RETRY_AFTER_S)},
    )  # fmt: skip


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error in request %s %s (%s)", request.method, request.url.path, _request_id(request))
    return internal_error_response()


def _request_id(request: Request) -> Any:
    return getattr(request.state, "request_id", "-")


def install_error_handlers(app: FastAPI) -> None:
    """Register every handler on ``app`` (the request-context middleware catches what escapes them)."""
    app.add_exception_handler(VpetlError, _on_vpetl_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    # only "cannot reach Redis" is a 503; any other Redis error (a script bug, a wrong type) is a 500
    app.add_exception_handler(redis.ConnectionError, _on_redis_error)
    app.add_exception_handler(redis.TimeoutError, _on_redis_error)
    app.add_exception_handler(Exception, _on_unexpected)
