"""``POST /predict``: one clip in, the task adapter's top-k labels out (mixed-task micro-batched)."""

from __future__ import annotations

import logging
import time
from typing import Annotated

from fastapi import APIRouter, Query, Request

from server.deps import ServicesDep, TaskQuery
from server.metrics import UNRESOLVED_TASK
from server.routes.common import CLIP_FORM, binary_body, error_responses
from server.uploads import MULTIPART_OVERHEAD, check_content_length, read_upload
from vpetl.errors import VpetlError
from vpetl.protocol import PredictionResponse

logger = logging.getLogger(__name__)

router = APIRouter(tags=["predict"])

@router.post(
    "/predict",
    response_model=PredictionResponse,
    summary="Classify one clip with a task's adapter",
    responses=error_responses(400, 404, 409, 413, 415, 422, 503),
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
        # Cheap refusals first: media type and declared size, then the task, and only then read the body.
        kind = CLIP_FORM.kind(request.headers.get("content-type"))
        limit = settings.max_upload_bytes
        check_content_length(request, limit + (MULTIPART_OVERHEAD if kind == "multipart" else 0), "clip")
        resolved = await predictor.resolve(task, version)
        await predictor.ensure_loaded(task, resolved)
        task_label = task
        data = await read_upload(request, CLIP_FORM, limit)
        # decoded where the backbone is: in this process (local engine) or in a Ray predictor replica
        result = await predictor.predict_encoded(data, task, resolved, topk)
        timing = dict(result.timing_ms)
        timing["total"] = round((time.perf_counter() - started) * 1000, 3)
        response = PredictionResponse.model_validate({**result.to_dict(), "timing_ms": timing})
        status = 200
        logger.debug(
            "predict task=%s version=%d adapter=%s request=%s total_ms=%.1f",
            task, result.version, result.adapter_sha256[:12], request.state.request_id, timing["total"],
        )  # fmt: skip
        return response
    except VpetlError as e:
        status = e.http_status
        raise
    finally:
        services.metrics.observe_prediction(task_label, status, time.perf_counter() - started)
