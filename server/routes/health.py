"""``/healthz`` (liveness), ``/readyz`` (backbone loaded and Redis reachable), ``/metrics`` (Prometheus)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request, Response

from server.deps import BearerDoc, ServicesDep, principal
from server.errors import NotReady
from server.metrics import CONTENT_TYPE_LATEST
from server.routes.common import error_responses
from vpetl.protocol import HealthResponse, ReadyResponse

router = APIRouter(tags=["health"])

# A readiness probe must answer fast; the store's client retries for seconds while Redis is down.
READY_REDIS_TIMEOUT_S = 1.0
READY_REPLICAS_TIMEOUT_S = 2.0


@router.get("/healthz", response_model=HealthResponse, summary="Liveness: the process serves HTTP")
async def healthz() -> HealthResponse:
    return HealthResponse()


@router.get(
    "/readyz", response_model=ReadyResponse, summary="Readiness: backbone loaded and Redis reachable",
    responses=error_responses(503),
)  # fmt: skip
async def readyz(request: Request, services: ServicesDep) -> ReadyResponse:
    try:
        replicas = await asyncio.wait_for(services.predictor.replica_stats(), READY_REPLICAS_TIMEOUT_S)
    except Exception:  # no replica answered in time (starting, or all gone): not ready, say so
        replicas = []
    # ready once at least one predictor holds the deployment's registered backbone
    checks = {"backbone": any(r.get("backbone_sha256") == services.identity.sha256 for r in replicas)}
    try:
        checks["redis"] = await asyncio.wait_for(services.store.ping(), READY_REDIS_TIMEOUT_S)
    except asyncio.TimeoutError:
        checks["redis"] = False
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise NotReady(f"not ready: {', '.join(failed)} unavailable")
    if not await _sees_every_task(request):  # the probe is public; tenants' task names are not
        replicas = [{k: v for k, v in r.items() if k not in TASK_FIELDS} for r in replicas]
    return ReadyResponse(checks=checks, replicas=replicas)


TASK_FIELDS = frozenset({"tasks", "load_failures"})  # what names tasks in a replica's stats


async def _sees_every_task(request: Request) -> bool:
    """Whether this (unauthenticated: the allow-list) request may see every task's name: open mode, or a valid
    credential that covers every task. Never refuses: a probe with a bad or no key just gets less."""
    auth = request.app.state.auth
    try:
        caller = await auth.authenticate(request.headers.get("authorization"))
    except Exception:  # no, wrong, revoked key; Redis away: the probe still answers, without task names
        return False
    return caller.sees_all and caller.allows("read")


def metrics_access(request: Request, services: ServicesDep, _: BearerDoc = None) -> None:
    """``/metrics`` needs the admin scope (its labels name tasks) unless ``metrics_public`` lets a scraper in
    without a key (``server/auth.py``'s allow-list)."""
    if not services.settings.metrics_public:
        principal(request).require("admin")


@router.get(
    "/metrics",
    dependencies=[Depends(metrics_access)],
    response_class=Response,
    response_model=None,
    summary="Prometheus metrics",
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}, **error_responses(401, 403)},
)
async def metrics(services: ServicesDep) -> Response:
    try:
        replicas = await asyncio.wait_for(services.predictor.replica_stats(), READY_REPLICAS_TIMEOUT_S)
    except Exception:
        replicas = []
    return Response(content=services.metrics.render(replicas), media_type=CONTENT_TYPE_LATEST)
