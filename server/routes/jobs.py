"""``/jobs``: queue adapter training on a task's uploaded clips (Redis stream ``vpetl:jobs``) and follow it."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from server.auth import charge_quota
from server.deps import TASK_SCHEMA, PrincipalDep, ServicesDep, require, visible
from server.routes.common import error_responses
from server.routes.jsonbody import json_body_schema, parse_json_body, read_json
from vpetl.errors import DatasetError
from vpetl.protocol import JobCreated, JobInfo, JobList, JobRequest
from vpetl.store.jobs import UnknownJob, job_params

router = APIRouter(prefix="/jobs", tags=["jobs"])


MAX_JSON_BYTES = 64 * 1024
JOB_ID_SCHEMA = {"pattern": "^[0-9a-f]{1,64}$"}  # what JobStore.get accepts


def _job_request_schema() -> dict[str, Any]:
    schema = json_body_schema(JobRequest)
    schema["properties"]["task"].update(TASK_SCHEMA)  # job_params checks the task name like every route does
    return schema


@router.post(
    "", status_code=202, response_model=JobCreated, dependencies=[require("train")],
    summary="Queue a training job (a `vpetl worker` picks it up; scope `train`)",
    responses=error_responses(401, 403, 404, 413, 415, 422, 429),
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": _job_request_schema()}}}
    },
)  # fmt: skip
async def create_job(http: Request, services: ServicesDep, caller: PrincipalDep) -> JobCreated:
    # The body is not a FastAPI body parameter on purpose: FastAPI reads a declared body before it runs the
    # route's dependencies, so the admin check would come after an unauthenticated client's whole body.
    request = parse_json_body(await read_json(http, MAX_JSON_BYTES), JobRequest)
    params = job_params(request.model_dump())
    http.state.audit_task = request.task  # the task is in the body: tell the audit trail
    visible(http, request.task, f"unknown task {request.task!r}")
    counts = await asyncio.to_thread(services.clips.counts, request.task)
    if not sum(counts.get("train", {}).values()):
        raise DatasetError(
            f"task {request.task!r} has no training clips yet: upload labelled clips first "
            f"(POST /datasets/{request.task}/clips?label=…)"
        )
    auth = http.app.state.auth
    counter = await charge_quota(auth, caller, "jobs", 1)
    try:
        job_id = await asyncio.to_thread(services.jobs.submit, params)
    except BaseException:
        if counter is not None:
            await auth.limits.refund(counter, 1)
        raise
    return JobCreated(job_id=job_id)


@router.get("", response_model=JobList, summary="Recent jobs, newest first (scope `read`: the key's tasks only)",
            dependencies=[require("read")], responses=error_responses(401, 403, 422))  # fmt: skip
async def list_jobs(
    services: ServicesDep, caller: PrincipalDep, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> JobList:
    jobs = await asyncio.to_thread(services.jobs.list, limit)
    # of the newest `limit` jobs, those of tasks the key may see (a job of another task does not exist for it)
    return JobList(jobs=[JobInfo.model_validate(j) for j in jobs if caller.sees(_job_task(j))])


def _job_task(job: dict[str, Any]) -> str:
    return str(job.get("params", {}).get("task", ""))


@router.get("/{job_id}", response_model=JobInfo, summary="One job: state, progress, result or error (scope `read`)",
            dependencies=[require("read")], responses=error_responses(401, 403, 404, 422))  # fmt: skip
async def get_job(
    services: ServicesDep,
    caller: PrincipalDep,
    job_id: Annotated[str, Path(max_length=64, description="id from POST /jobs", json_schema_extra=JOB_ID_SCHEMA)],
) -> JobInfo:
    job = await asyncio.to_thread(services.jobs.get, job_id)
    if not caller.sees(_job_task(job)):
        raise UnknownJob(f"no job {job_id!r}")  # the store's own wording: a hidden job reads as a missing one
    return JobInfo.model_validate(job)
