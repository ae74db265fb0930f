"""``GET /backbone/onnx``: the served backbone as one ONNX graph whose adapter weights are inputs (for the edge).

The graph is exported on the first request for a family (in a worker thread, seconds for the demo backbone) and
kept under ``<data_dir>/onnx/`` keyed by backbone name, sha256 and family, so later requests — and restarts — just
stream the file. ``ETag`` is the sha256 of the file; ``If-None-Match`` with it answers 304 without a body, so an
edge device checks for a new backbone with one tiny request. ``?family=`` picks the adapter family the graph
takes (default ``bapat``; a LoRA adapter needs ``family=lora``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse

from server.deps import ServicesDep, require
from server.routes.common import error_responses
from server.services import Services

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/backbone", tags=["backbone"])

Family = Literal["bapat", "patt", "adaptmlp", "lora", "linear"]


def graph_path(services: Services, family: str) -> Path:
    sha = services.identity.sha256
    return Path(services.settings.data_dir) / "onnx" / f"{services.identity.name}-{sha[:16]}-{family}.onnx"


def _cached_sha256(path: Path) -> str | None:
    """The graph's sha256 from its sidecar, if the sidecar still describes this file (size and mtime)."""
    sidecar = path.with_suffix(".json")
    if not path.is_file() or not sidecar.is_file():
        return None
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    stat = path.stat()
    if record.get("size") != stat.st_size or record.get("mtime_ns") != stat.st_mtime_ns:
        return None  # another process replaced the file after this sidecar was written
    return record.get("sha256")


def _hash_and_record(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    stat = path.stat()
    record = {"sha256": digest.hexdigest(), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path.with_suffix(".json"))
    return record["sha256"]


def _export(services: Services, family: str, path: Path) -> str:
    from vpetl.formats.onnx import export_backbone_onnx  # torch-heavy: only when a graph is first asked for

    logger.info("exporting backbone %s as ONNX (family %s) to %s", services.identity.name, family, path)
    export_backbone_onnx(services.require_backbone(), family, path)
    return _hash_and_record(path)


async def ensure_graph(request: Request, services: Services, family: str) -> tuple[Path, str]:
    """(path, sha256) of the family's graph, exporting it once (one export per family at a time)."""
    path = graph_path(services, family)
    sha = _cached_sha256(path)
    if sha is not None:
        return path, sha
    locks: dict[str, asyncio.Lock] | None = getattr(request.app.state, "onnx_locks", None)
    if locks is None:  # per app, not per module: no process-global state
        locks = request.app.state.onnx_locks = {}
    lock = locks.setdefault(family, asyncio.Lock())
    async with lock:
        sha = _cached_sha256(path)
        if sha is None:
            sha = await asyncio.to_thread(_hash_and_record, path) if path.is_file() else None
        if sha is None:
            sha = await asyncio.to_thread(_export, services, family, path)
    return path, sha


def _matches(if_none_match: str | None, sha256: str) -> bool:
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or f'"{sha256}"' in tags


@router.get(
    "/onnx",
    response_class=Response,
    response_model=None,
    summary="The backbone as ONNX with adapter weights as graph inputs (ETag = sha256; 304 when unchanged)",
    dependencies=[require(None)],  # any key: the graph holds the shared backbone, no tenant's adapter
    responses={
        200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        304: {"description": "If-None-Match holds the current ETag"},
        **error_responses(422),
    },
)
async def backbone_onnx(
    request: Request,
    services: ServicesDep,
    family: Annotated[Family, Query(description="adapter family the graph takes as inputs")] = "bapat",
) -> Response:
    path, sha = await ensure_graph(request, services, family)
    headers = {"ETag": f'"{sha}"', "Cache-Control": "no-cache"}
    if _matches(request.headers.get("if-none-match"), sha):
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type="application/octet-stream", headers=headers,
                        filename=f"{services.identity.name}-{family}.onnx")
