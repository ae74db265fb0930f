"""``/jobs``: queue adapter training on a task's uploaded clips (Redis stream ``vpetl:jobs``) and follow it."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from server.deps import TASK_SCHEMA, AdminDep, ServicesDep
from server.routes.common import error_responses
from server.routes.jsonbody import json_body_schema, parse_json_body, read_json
from vpetl.errors import DatasetError
from vpetl.protocol import JobCreated, JobInfo, JobList, JobRequest
from vpetl.store.jobs import job_params

router = APIRouter(prefix="/jobs", tags=["jobs"])


MAX_JSON_BYTES = 64 * 1024
JOB_ID_SCHEMA = {"pattern": "^[0-9a-f]{1,64}$"}  # what JobStore.get accepts


def _job_request_schema() -> dict[str, Any]:
    schema = json_body_schema(JobRequest)
    schema["properties"]["task"].update(TASK_SCHEMA)  # job_params checks the task name like every route does
    return schema


@router.post(
    "", status_code=202, response_model=JobCreated, dependencies=[AdminDep],
    summary="Queue a training job (a `vpetl worker` picks it up)",
    responses=error_responses(401, 403, 404, 413, 415, 422),
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": _job_request_schema()}}}
    },
)  # fmt: skip
async def create_job(http: Request, services: ServicesDep) -> JobCreated:
    # The body is not a FastAPI body parameter on purpose: FastAPI reads a declared body before it runs the
    # route's dependencies, so the admin check would come after an unauthenticated client's whole body.
    request = parse_json_body(await read_json(http, MAX_JSON_BYTES), JobRequest)
    params = job_params(request.model_dump())
    counts = await asyncio.to_thread(services.clips.counts, request.task)
    if not sum(counts.get("train", {}).values()):
        raise DatasetError(
            f"task {request.task!r} has no training clips yet: upload labelled clips first "
            f"(POST /datasets/{request.task}/clips?label=…)"
        )
    job_id = await asyncio.to_thread(services.jobs.submit, params)
    return JobCreated(job_id=job_id)


@router.get("", response_model=JobList, summary="Recent jobs, newest first")
async def list_jobs(
    services: ServicesDep, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> JobList:
    jobs = await asyncio.to_thread(services.jobs.list, limit)
    return JobList(jobs=[JobInfo.model_validate(j) for j in jobs])


@router.get("/{job_id}", response_model=JobInfo, summary="One job: state, progress, result or error",
            responses=error_responses(404, 422))
async def get_job(
    services: ServicesDep,
    job_id: Annotated[str, Path(max_length=64, description="id from POST /jobs", json_schema_extra=JOB_ID_SCHEMA)],
) -> JobInfo:
    return JobInfo.model_validate(await asyncio.to_thread(services.jobs.get, job_id))
