"""``POST /predict``: one clip in, the task adapter's top-k labels out (mixed-task micro-batched)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Request

from server.deps import ServicesDep, TaskQuery
from server.metrics import UNRESOLVED_TASK
from server.routes.common import binary_body, error_responses
from server.uploads import MULTIPART_OVERHEAD, UploadForm, check_content_length, read_upload
from vpetl.errors import InvalidVideo, VpetlError
from vpetl.protocol import InputSpec, PredictionResponse
from vpetl.video import load_clip

logger = logging.getLogger(__name__)

router = APIRouter(tags=["predict"])

CLIP_FORM = UploadForm(field="clip", raw_types=("video/*", "application/octet-stream"), what="clip")


def decode_clip(data: bytes, spec: InputSpec) -> np.ndarray:
    """Decode + sample + preprocess exactly as the backbone's InputSpec says (runs in a worker thread)."""
    if not data:
        raise InvalidVideo("the clip is empty (0 bytes)")
    try:
        return load_clip(data, spec)
    except VpetlError:
        raise
    except (RuntimeError, ValueError, IndexError, EOFError, OSError) as e:
        # load_clip maps decoder failures to InvalidVideo; this is the net for one it did not foresee
        logger.warning("decoder raised %s for an upload; answered invalid_video", type(e).__name__)
        raise InvalidVideo(f"the clip could not be decoded ({type(e).__name__})") from e


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
        decode_started = time.perf_counter()
        clip = await asyncio.to_thread(decode_clip, data, services.backbone.input_spec)
        decode_ms = (time.perf_counter() - decode_started) * 1000
        result = await predictor.predict(clip, task, resolved, topk)
        timing = dict(result.timing_ms)
        timing["decode"] = round(decode_ms, 3)
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
