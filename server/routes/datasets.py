"""``/datasets``: labelled clip uploads for training (validated by decoding) and their counts."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from server.auth import charge_quota
from server.deps import LabelQuery, PrincipalDep, ServicesDep, TaskPath, require
from server.routes.common import CLIP_FORM, binary_body, error_responses
from server.services import Services
from server.uploads import MULTIPART_OVERHEAD, check_content_length, read_upload
from vpetl.protocol import ClipUploaded, DatasetCounts

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.post(
    "/{task}/clips",
    status_code=201,
    response_model=ClipUploaded,
    summary="Upload one labelled clip (scope `upload`); it is decoded first, so only usable clips are stored",
    dependencies=[require("upload")],
    responses=error_responses(400, 401, 403, 404, 413, 415, 422, 429),
    openapi_extra=binary_body("the clip (mp4, webm, …)", "video/*", "application/octet-stream", field="clip"),
)
async def upload_clip(
    task: TaskPath,
    label: LabelQuery,
    request: Request,
    services: ServicesDep,
    caller: PrincipalDep,
    split: Annotated[Literal["train", "val"], Query(description="train or val")] = "train",
) -> ClipUploaded:
    limit = services.settings.max_upload_bytes
    kind = CLIP_FORM.kind(request.headers.get("content-type"))
    check_content_length(request, limit + (MULTIPART_OVERHEAD if kind == "multipart" else 0), "clip")
    data = await read_upload(request, CLIP_FORM, limit)
    auth = request.app.state.auth
    counter = await charge_quota(auth, caller, "upload", len(data))  # 429 before any decode work
    try:
        return await _store_clip(services, task, label, split, data)
    except BaseException:
        if counter is not None:  # a refused clip does not count against the key's daily bytes
            await auth.limits.refund(counter, len(data))
        raise


async def _store_clip(services: Services, task: str, label: str, split: str, data: bytes) -> ClipUploaded:
    # Decoding with the backbone's spec proves the clip can be trained on; the result itself is not kept.
    # decoded as /predict decodes (a decoder process, the same frame limits), by whichever engine holds the backbone
    await services.predictor.validate_clip(data)
    record = await asyncio.to_thread(services.clips.add_clip, task, label, split, data)
    return ClipUploaded.model_validate(record.model_dump(exclude={"path", "created_at"}))


@router.get("/{task}", response_model=DatasetCounts, summary="Clip counts per split and label (scope `read`)",
            dependencies=[require("read")], responses=error_responses(401, 403, 404, 422))  # fmt: skip
async def dataset_counts(task: TaskPath, services: ServicesDep) -> DatasetCounts:
    counts = await asyncio.to_thread(services.clips.counts, task)
    return DatasetCounts(task=task, counts=counts, total=sum(n for split in counts.values() for n in split.values()))
