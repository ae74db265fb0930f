"""``POST /predict``: one clip in, the task adapter's top-k labels out (mixed-task micro-batched)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated

from fastapi import APIRouter, Query, Request

from server.batcher import Admission
from server.deps import ServicesDep, TaskQuery, require
from server.metrics import UNRESOLVED_TASK
from server.routes.common import CLIP_FORM, binary_body, error_responses
from server.services import Services
from server.settings import Settings
from server.uploads import MULTIPART_OVERHEAD, check_content_length, read_upload
from vpetl.errors import DeadlineExceeded, Overloaded, VpetlError
from vpetl.protocol import PredictionResponse

logger = logging.getLogger(__name__)

router = APIRouter(tags=["predict"])

@router.post(
    "/predict",
    response_model=PredictionResponse,
    summary="Classify one clip with a task's adapter (scope `predict`)",
    dependencies=[require("predict")],
    responses=error_responses(400, 401, 403, 404, 409, 413, 415, 422, 429, 503, 504),
    openapi_extra=binary_body("the clip (mp4, webm, …)", "video/*", "application/octet-stream", field="clip"),
)
async def predict(
    request: Request,
    services: ServicesDep,
    task: TaskQuery,
    version: Annotated[int | None, Query(ge=1, description="adapter version (default: the current one)")] = None,
    topk: Annotated[int, Query(ge=1, le=1000, description="how many labels to return")] = 5,
) -> PredictionResponse:
    started = time.perf_counter()
    settings, predictor = services.settings, services.predictor
    task_label, status = UNRESOLVED_TASK, 500
    try:
        # Cheap refusals first, before any byte of the body is read: media type, declared size, admission (a
        # full server answers 503 + Retry-After now, not after the upload), then the task.
        kind = CLIP_FORM.kind(request.headers.get("content-type"))
        # a clip to classify is smaller than a training upload may be: max_predict_mb, never above max_upload_mb
        limit = min(int(settings.max_predict_mb * 1024 * 1024), settings.max_upload_bytes)
        check_content_length(request, limit + (MULTIPART_OVERHEAD if kind == "multipart" else 0), "clip")
        is_full = getattr(predictor, "is_full", None)  # the local engine's queue; a Ray ingress has none here
        if is_full is not None and is_full():
            raise Overloaded("the prediction queue is full; retry shortly")
        with _admission(request, settings).admit():
            deadline = asyncio.timeout(settings.request_deadline_s)
            try:
                async with deadline:
                    # loaded before the body is read; the current version falls back to the last one that loaded
                    resolved = await predictor.serve_version(task, version)
                    task_label = task
                    response = await _predict(request, services, task, resolved, topk, limit, started,
                                              pinned=version is not None)  # fmt: skip
            except TimeoutError:
                if not deadline.expired():
                    raise
                raise DeadlineExceeded(
                    f"the prediction did not finish within {settings.request_deadline_s:g} s"
                ) from None
        status = 200
        return response
    except VpetlError as e:
        status = e.http_status
        raise
    finally:
        services.metrics.observe_prediction(task_label, status, time.perf_counter() - started)


def _admission(request: Request, settings: Settings) -> Admission:
    """This app's /predict admission gate (one per app: the app is the unit a lifespan serves)."""
    gate = getattr(request.app.state, "predict_admission", None)
    if gate is None:
        gate = Admission(settings.max_inflight or settings.max_queue + settings.max_batch_size)
        request.app.state.predict_admission = gate
    return gate


async def _predict(request: Request, services: Services, task: str, resolved: int, topk: int, limit: int,
                   started: float, *, pinned: bool) -> PredictionResponse:
    """Read the body, then predict: decoded where the backbone is (a decoder process of this server, local
    engine, or of a Ray replica)."""
    data = await read_upload(request, CLIP_FORM, limit)
    result = await services.predictor.predict_encoded(data, task, resolved, topk, pinned=pinned)
    timing = dict(result.timing_ms)
    timing["total"] = round((time.perf_counter() - started) * 1000, 3)
    response = PredictionResponse.model_validate({**result.to_dict(), "timing_ms": timing})
    logger.debug(
        "predict task=%s version=%d adapter=%s request=%s total_ms=%.1f",
        task, result.version, result.adapter_sha256[:12], request.state.request_id, timing["total"],
    )  # fmt: skip
    return response
