"""``/adapters``: list, describe, download (ETag = sha256), upload (validated against THIS server's backbone
before it is stored), rollback and delete task adapters."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import Field

from server.auth import Principal
from server.deps import TASK_SCHEMA, AdminDep, PrincipalDep, ServicesDep, TaskPath, _check_task, require
from server.routes.common import binary_body, error_responses
from server.routes.jsonbody import json_body_schema, parse_json_body, read_json
from server.services import Services
from server.uploads import MULTIPART_OVERHEAD, UploadForm, check_content_length, read_upload
from vpetl.artifact import adapter_sha256, convert_adapter, read_adapter_meta
from vpetl.errors import InvalidAdapter, InvalidRequest, VpetlError
from vpetl.protocol import (
    AdapterDeleted,
    AdapterDetail,
    AdapterInfo,
    AdapterList,
    AdapterRef,
    RollbackRequest,
    VersionInfo,
)
from vpetl.store import TaskSummary, VersionRecord
from vpetl.store._ops import MAX_PAGE

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/adapters", tags=["adapters"])

ADAPTER_FORM = UploadForm(
    field="adapter", raw_types=("application/octet-stream", "application/vnd.safetensors"), what="adapter"
)
MAX_JSON_BYTES = 64 * 1024
DEFAULT_PAGE = 100
_NAME_RE = re.compile(r"^[a-z0-9_.-]{1,64}$")
# What the store keeps beside each version (the rest of the artifact's config stays in the file itself).
STORED_META = ("method", "trainable_params", "num_classes", "metrics", "backbone", "backbone_sha256", "labels")


def _version_info(record: VersionRecord, current: int) -> VersionInfo:
    return VersionInfo.model_validate({**record.model_dump(), "current": record.version == current})


def _adapter_info(summary: TaskSummary) -> AdapterInfo:
    record = summary.current
    return AdapterInfo.model_validate(
        {
            **record.model_dump(include=set(STORED_META)),
            "task": summary.task,
            "version": summary.version,
            "latest_version": summary.latest_version,
            "num_versions": summary.num_versions,
            "sha256": record.sha256,
            "size": record.size,
            "created_at": summary.created_at,
            "updated_at": summary.updated_at,
        }
    )


def _etag(sha256: str) -> str:
    return f'"{sha256}"'


def _etag_matches(if_none_match: str, sha256: str) -> bool:
    """RFC 9110 weak comparison of an If-None-Match list against the artifact's ETag."""
    if if_none_match.strip() == "*":
        return True
    for tag in if_none_match.split(","):
        tag = tag.strip()
        tag = tag[2:] if tag.startswith("W/") else tag
        if tag == _etag(sha256):
            return True
    return False


class AdapterPage(AdapterList):
    """``GET /adapters``: ``adapters`` as before, plus the paging fields (absent from older servers' answers)."""

    total: int = Field(..., description="tasks in the index matching `prefix` (before the `method` filter)")
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page; null on the last page")


NAME_PART = {"pattern": r"^[a-z0-9_.-]{1,64}$", "minLength": 1, "maxLength": 64}


@router.get(
    "", response_model=AdapterPage, dependencies=[require("read")],
    summary="Tasks and their current adapter versions (paged with ?limit=; scope `read`: the key's tasks only)",
    responses=error_responses(401, 403, 422),
)  # fmt: skip
async def list_adapters(
    services: ServicesDep,
    caller: PrincipalDep,
    limit: Annotated[
        int | None,
        Query(ge=1, le=MAX_PAGE, description="page size; without it (and without cursor/prefix/method) every "
                                             "task is listed in one answer, as before paging existed"),
    ] = None,
    cursor: Annotated[
        str | None, Query(description="`next_cursor` of the previous page", json_schema_extra=TASK_SCHEMA)
    ] = None,
    prefix: Annotated[str | None, Query(description="only task names starting with this",
                                        json_schema_extra=NAME_PART)] = None,
    method: Annotated[str | None, Query(description="only tasks whose current version uses this PETL method",
                                        json_schema_extra=NAME_PART)] = None,
) -> AdapterPage:
    if cursor is not None:
        _check_task(cursor)
    if any(value is not None and not _NAME_RE.fullmatch(value) for value in (prefix, method)):
        raise InvalidRequest("prefix and method: up to 64 of [a-z0-9_.-]")
    if not caller.sees_all:
        return await _visible_page(services, caller, limit, cursor, prefix, method)
    if limit is None and cursor is None and prefix is None and method is None:
        tasks = await services.store.list_tasks()  # the unpaged answer older clients expect
        return AdapterPage(adapters=[_adapter_info(t) for t in tasks], total=len(tasks), next_cursor=None)
    page = await services.store.list_page(cursor, limit or DEFAULT_PAGE, prefix or "", method)
    return AdapterPage(adapters=[_adapter_info(t) for t in page.tasks], total=page.total, next_cursor=page.next_cursor)


async def _visible_page(
    services: Services, caller: Principal, limit: int | None, cursor: str | None, prefix: str | None,
    method: str | None,
) -> AdapterPage:
    """A listing for a key limited to some task patterns: only the tasks it may see exist. Filtered here from the
    full listing (a scoped key's deployment is a site's or a tenant's handful of tasks), paged like the store's."""
    tasks = sorted((t for t in await services.store.list_tasks() if caller.sees(t.task)), key=lambda t: t.task)
    if limit is None and cursor is None and prefix is None and method is None:
        return AdapterPage(adapters=[_adapter_info(t) for t in tasks], total=len(tasks), next_cursor=None)
    named = [t for t in tasks if t.task.startswith(prefix or "")]
    after = [t for t in named if cursor is None or t.task > cursor]
    after = [t for t in after if method is None or t.current.method == method]
    page = after[: limit or DEFAULT_PAGE]
    more = len(after) > len(page)
    return AdapterPage(adapters=[_adapter_info(t) for t in page], total=len(named),
                       next_cursor=page[-1].task if more else None)  # fmt: skip


@router.get(
    "/{task}", response_model=AdapterDetail, summary="One task with its version history (scope `read`)",
    dependencies=[require("read")], responses=error_responses(401, 403, 404, 422),
)  # fmt: skip
async def get_adapter(task: TaskPath, services: ServicesDep) -> AdapterDetail:
    summary, history = await services.store.detail(task)  # one script call, whatever the number of tasks
    info = _adapter_info(summary)
    versions = [_version_info(r, summary.version) for r in history]
    return AdapterDetail.model_validate({**info.model_dump(), "versions": versions})


@router.get(
    "/{task}/download",
    response_class=Response,
    response_model=None,
    summary="The adapter file (ETag = sha256 of the bytes sent; If-None-Match → 304; scope `read`)",
    dependencies=[require("read")],
    responses={
        200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        304: {"description": "the client's copy (If-None-Match) is current"},
        **error_responses(400, 401, 403, 404, 422),
    },
)
async def download_adapter(
    task: TaskPath,
    request: Request,
    services: ServicesDep,
    version: Annotated[int | None, Query(ge=1, description="version to download (default: the current one)")] = None,
    dtype: Annotated[
        Literal["float32", "float16"] | None,
        Query(description="send the tensors as this float type (default: as stored); float16 halves the bytes of "
                          "an fp32 adapter, and an adapter with values beyond float16's range is refused (400 "
                          "`invalid_adapter`: the stored file cannot be sent that way)"),
    ] = None,
) -> Response:
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and dtype is None:
        record = await services.store.get_record(task, version)  # cheap: no blob
        if _etag_matches(if_none_match, record.sha256):
            return Response(status_code=304, headers={"ETag": _etag(record.sha256), "Cache-Control": "no-cache"})
    record, data = await services.store.get_bytes(task, version)
    sha = record.sha256
    if dtype is not None:
        # converted per request (numpy, milliseconds even for ViT-B adapters), deterministic, so the ETag is stable
        data = await asyncio.to_thread(convert_adapter, data, dtype)
        sha = adapter_sha256(data)
        if if_none_match is not None and _etag_matches(if_none_match, sha):
            return Response(status_code=304, headers={"ETag": _etag(sha), "Cache-Control": "no-cache"})
    return Response(
        content=data,
        media_type="application/octet-stream",
        headers={
            "ETag": _etag(sha),
            "Cache-Control": "no-cache",  # a client may keep it, but must revalidate (the pointer moves)
            "Content-Disposition": f'attachment; filename="{task}-v{record.version}.safetensors"',
            "X-Adapter-Version": str(record.version),
            "X-Adapter-Sha256": record.sha256,  # the stored artifact's identity (what listings show)
        },
    )


async def _validate(services: Services, task: str, data: bytes) -> dict[str, object]:
    """Run the full load checks on the upload (format, finiteness, method, shapes, backbone hash) where the
    backbone is — this process, or a Ray predictor replica — without caching it, and return the metadata to store
    with the version."""
    if not data:
        raise InvalidAdapter("the adapter file is empty (0 bytes)")
    try:
        await services.predictor.validate_adapter(task, data)
    except VpetlError:
        raise
    except Exception as e:  # a file that passed every check but still broke decoding: bad input, and a bug to fix
        logger.exception("adapter upload for %s passed validation but failed to decode", task)
        raise InvalidAdapter(f"the adapter could not be decoded ({type(e).__name__})") from e
    meta = await asyncio.to_thread(read_adapter_meta, data)
    stored = meta.model_dump(mode="json", include=set(STORED_META))
    stored["input_spec"] = meta.input_spec.model_dump(mode="json")
    return stored


@router.put(
    "/{task}",
    status_code=201,
    response_model=AdapterRef,
    summary="Upload an adapter file as the task's next version (scope `publish`)",
    dependencies=[require("publish")],
    responses=error_responses(400, 401, 403, 404, 409, 413, 415, 422),
    openapi_extra=binary_body("the adapter .safetensors file", "application/octet-stream", field="adapter"),
)
async def put_adapter(task: TaskPath, request: Request, response: Response, services: ServicesDep) -> AdapterRef:
    limit = services.settings.max_adapter_bytes
    kind = ADAPTER_FORM.kind(request.headers.get("content-type"))
    check_content_length(request, limit + (MULTIPART_OVERHEAD if kind == "multipart" else 0), "adapter")
    data = await read_upload(request, ADAPTER_FORM, limit)
    meta = await _validate(services, task, data)
    record = await services.store.publish(task, data, meta)
    logger.info(
        "published task=%s version=%d adapter=%s request=%s",
        task, record.version, record.sha256[:12], request.state.request_id,
    )  # fmt: skip
    response.headers["Location"] = f"/adapters/{task}"
    return AdapterRef(task=task, version=record.version, sha256=record.sha256)


@router.post(
    "/{task}/rollback",
    response_model=AdapterRef,
    summary="Make an existing version current (scope `publish`)",
    dependencies=[require("publish")],
    responses=error_responses(401, 403, 404, 413, 422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": json_body_schema(RollbackRequest)}},
        }
    },
)
async def rollback_adapter(task: TaskPath, request: Request, services: ServicesDep) -> AdapterRef:
    # The body is tiny; it is read with a bound like every other body rather than by FastAPI's unbounded reader.
    wanted = parse_json_body(await read_json(request, MAX_JSON_BYTES), RollbackRequest)
    record = await services.store.rollback(task, wanted.version)
    logger.info(
        "rolled back task=%s to version=%d adapter=%s request=%s",
        task, record.version, record.sha256[:12], request.state.request_id,
    )  # fmt: skip
    return AdapterRef(task=task, version=record.version, sha256=record.sha256)


@router.delete(
    "/{task}",
    response_model=AdapterDeleted,
    summary="Remove the task and all its versions (scope `admin`; its uploaded clips stay)",
    dependencies=[AdminDep],
    responses=error_responses(401, 403, 404, 422),
)
async def delete_adapter(task: TaskPath, request: Request, services: ServicesDep) -> AdapterDeleted:
    removed = await services.store.delete(task)
    logger.info("deleted task=%s (%d versions) request=%s", task, removed["versions"], request.state.request_id)
    return AdapterDeleted(task=task, versions_removed=removed["versions"])
