"""``/keys`` (create, list, revoke API keys) and ``/audit`` (the audit trail): admin only.

A key's token is in the answer to ``POST /keys`` and nowhere else: Redis keeps only its sha256.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from server.deps import TASK_SCHEMA, AdminDep, ServicesDep, _check_task
from server.routes.common import error_responses
from server.routes.jsonbody import json_body_schema, parse_json_body, read_json
from vpetl.store.apikeys import ApiKeyStore

router = APIRouter(tags=["keys"])

MAX_JSON_BYTES = 16 * 1024
KEY_ID_PATTERN = "^(vpk_)?[0-9a-f]{12}$"


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., description="who or what holds the key (a device, a site, a tenant)")
    scopes: list[Literal["predict", "read", "upload", "train", "publish", "admin"]] = Field(..., min_length=1)
    tasks: list[str] = Field(["*"], min_length=1, description="task patterns, '*' the only wildcard: site-12-*")
    expires_in_s: float | None = Field(None, gt=0, description="lifetime in seconds (default: no expiry)")
    rps: float | None = Field(None, gt=0, description="requests per second (token bucket, shared by replicas)")
    burst: int | None = Field(None, ge=1, description="bucket size (default max(1, 2 * rps))")
    upload_mb_per_day: float | None = Field(None, gt=0, description="clip upload MiB per UTC day")
    jobs_per_hour: int | None = Field(None, ge=1, description="training jobs per UTC hour")


class KeyInfo(BaseModel):
    id: str
    prefix: str = Field(..., description="the token's first characters: how a key is recognised")
    name: str
    state: Literal["active", "revoked", "expired"]
    scopes: list[str]
    tasks: list[str]
    rps: float | None = None
    burst: int | None = None
    upload_mb_per_day: float | None = None
    jobs_per_hour: int | None = None
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None


class KeyCreated(BaseModel):
    token: str = Field(..., description="the secret: shown once, stored nowhere (only its sha256)")
    key: KeyInfo


class KeyList(BaseModel):
    keys: list[KeyInfo]


class AuditEntry(BaseModel):
    id: str
    ts: float
    key: str = Field(..., description="key prefix, 'admin' (bootstrap token), 'open' or 'cli'")
    method: str
    route: str
    path: str
    task: str
    status: int
    request_id: str


class AuditList(BaseModel):
    entries: list[AuditEntry]


def _keys(services: Any) -> ApiKeyStore:
    return ApiKeyStore(services.jobs.redis)  # the services' blocking client, called from a worker thread


@router.post(
    "/keys", status_code=201, response_model=KeyCreated, dependencies=[AdminDep],
    summary="Create an API key (admin); the token is in this answer only",
    responses=error_responses(401, 403, 413, 422),
    openapi_extra={"requestBody": {"required": True,
                                   "content": {"application/json": {"schema": json_body_schema(KeyCreate)}}}},
)  # fmt: skip
async def create_key(request: Request, services: ServicesDep) -> KeyCreated:
    body = parse_json_body(await read_json(request, MAX_JSON_BYTES), KeyCreate)
    fields = body.model_dump()
    name, scopes, tasks = fields.pop("name"), fields.pop("scopes"), fields.pop("tasks")
    token, record = await asyncio.to_thread(_keys(services).create, name, scopes, tasks, **fields)
    request.state.audit_path = f"/keys/{record.id}"  # the audit entry names the key it made (never the token)
    return KeyCreated(token=token, key=KeyInfo.model_validate(record.public()))


@router.get("/keys", response_model=KeyList, dependencies=[AdminDep], summary="Every API key (admin; no secrets)",
            responses=error_responses(401, 403))  # fmt: skip
async def list_keys(services: ServicesDep) -> KeyList:
    records = await asyncio.to_thread(_keys(services).list)
    return KeyList(keys=[KeyInfo.model_validate(r.public()) for r in records])


@router.delete(
    "/keys/{key_id}", response_model=KeyInfo, dependencies=[AdminDep],
    summary="Revoke an API key (admin): refused on every replica within a second",
    responses=error_responses(401, 403, 404, 422),
)  # fmt: skip
async def revoke_key(
    services: ServicesDep,
    key_id: Annotated[str, Path(description="key id or prefix (vpk_…)", pattern=KEY_ID_PATTERN)],
) -> KeyInfo:
    record = await asyncio.to_thread(_keys(services).revoke, key_id)
    return KeyInfo.model_validate(record.public())


@router.get("/audit", response_model=AuditList, dependencies=[AdminDep],
            summary="The audit trail, newest first (admin)", responses=error_responses(401, 403, 422))  # fmt: skip
async def audit(
    services: ServicesDep,
    count: Annotated[int, Query(ge=1, le=1000, description="entries to return")] = 100,
    task: Annotated[str | None, Query(description="only this task's entries", json_schema_extra=TASK_SCHEMA)] = None,
) -> AuditList:
    if task is not None:
        _check_task(task)  # 422 like every task parameter (the schema states the same rule)
    entries = await asyncio.to_thread(_keys(services).audit, count, task)
    return AuditList(entries=[AuditEntry.model_validate(e) for e in entries])
