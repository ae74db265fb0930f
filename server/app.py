"""The FastAPI app factory: ``build_app(services)`` — no globals, no settings read at import.

The app holds its :class:`~server.services.Services` in ``app.state``; the lifespan starts and stops their
loop-bound parts (the predictor's event listener, pointer check and micro-batcher). Closing the process-bound
parts (embedded Redis) stays with whoever built the services. Routers live one per module in ``server/routes``;
a new resource (``/jobs``) is one more module and one more line in :func:`_routers`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, FastAPI

from server.auth import Authenticator, AuthMiddleware
from server.errors import install_error_handlers
from server.middleware import LoopbackGuardMiddleware, RequestContextMiddleware
from server.services import Services

DESCRIPTION = (
    "One frozen video transformer serving many parameter-efficient task adapters. Errors are "
    '`{"error": {"code", "message"}}` with a stable code. Once an admin token or any API key is configured, '
    "every route but the health probes needs `Authorization: Bearer <key>` (scopes, task patterns: README, Security)."
)


def _routers() -> list[APIRouter]:
    from server.routes import adapters, apikeys, backbone, datasets, health, jobs, onnx, predict, ui

    routers = [predict.router, adapters.router, datasets.router, jobs.router, backbone.router, onnx.router]
    routers.append(apikeys.router)
    return [*routers, health.router, ui.router]


def _version() -> str:
    try:
        return version("vpetl")
    except PackageNotFoundError:
        return "0+unknown"


def build_app(services: Services) -> FastAPI:
    """The HTTP API over ``services`` (OpenAPI at ``/docs``)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.start()
        await auth.start()
        try:
            yield
        finally:
            await auth.stop()
            await services.stop()

    app = FastAPI(title="vpetl", version=_version(), description=DESCRIPTION, lifespan=lifespan, docs_url="/docs")
    app.state.services = services
    # keys and the admin token, on every engine: a Ray ingress replica builds this same app (server/ray_app.py)
    auth = app.state.auth = Authenticator(services.settings, services.store.redis)
    install_error_handlers(app)
    app.add_middleware(AuthMiddleware, auth=auth)  # innermost: after the loopback guard, before routing
    if not services.settings.admin_token:
        # no token: the server binds loopback only (Settings.check_bind); keep browsers' pages out as well
        app.add_middleware(LoopbackGuardMiddleware, bound_host=services.settings.host)
    # added last = outermost: the guard's refusals get a request id and are counted too
    app.add_middleware(RequestContextMiddleware, metrics=services.metrics)
    for router in _routers():
        app.include_router(router)
    return app
