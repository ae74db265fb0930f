"""``GET /backbone/onnx``: the served backbone as one ONNX graph whose adapter weights are inputs (for the edge).

The graph is exported on the first request for a family (in a worker thread, seconds for the demo backbone) and
kept under ``<data_dir>/onnx/`` keyed by backbone name, sha256 and family, so later requests — and restarts — just
stream the file. ``ETag`` is the sha256 of the file; ``If-None-Match`` with it answers 304 without a body, so an
edge device checks for a new backbone with one tiny request. ``?family=`` picks the adapter family the graph
takes (default ``bapat``; a LoRA adapter needs ``family=lora``).

Variants, built from that fp32 graph on first request and cached the same way (``vpetl/formats/onnx_quant.py``,
``onnx_merge.py``):

- ``?quant=int8``: dynamic int8 weights (a quarter of the bytes); the adapters stay float inputs.
- ``?task=T``: a single-task graph with T's current adapter (or ``version``) merged into constants: the clip is its
  only input. LoRA/BitFit are merged into the weights, BAPAT/PATT/AdaptMLP folded as initializers. Combines with
  ``quant``. A new adapter version is a new file (the name holds the adapter's sha256).

``GET /backbone/onnx/agreement?quant=&task=`` runs a variant against the fp32 graph on T's validation clips
(top-1 agreement, largest logit difference) with T's adapter; the result is cached per (variant, adapter).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel

from server.deps import TASK_SCHEMA, ServicesDep, _check_task, principal, require, visible
from server.routes.common import error_responses
from server.services import Services
from vpetl.artifact import read_adapter, read_adapter_meta
from vpetl.errors import IncompatibleAdapter, InvalidRequest

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/backbone", tags=["backbone"])

Family = Literal["bapat", "patt", "adaptmlp", "lora", "linear"]
Quant = Literal["fp32", "int8"]
FAMILY_NAMES: tuple[str, ...] = get_args(Family)
MAX_AGREEMENT_CLIPS = 256  # a bound on the work one agreement request can cause


class GraphAgreement(BaseModel):
    """A graph variant against the fp32 shared graph on a task's validation clips (same adapter fed to both)."""

    task: str
    family: str
    quant: str
    merged: bool
    graph_sha256: str
    adapter_sha256: str
    clips: int
    agree: int
    agreement: float | None  # None: the task has no validation clips
    max_abs_logit_diff: float | None


def graph_path(services: Services, family: str, quant: str = "fp32", merged_sha256: str | None = None) -> Path:
    """The cache file of a graph: the family graph, its int8 copy, or a task's merged graph (keyed by adapter)."""
    sha = services.identity.sha256
    kind = f"merged-{merged_sha256[:16]}" if merged_sha256 else family
    suffix = "" if quant == "fp32" else f"-{quant}"
    return Path(services.settings.data_dir) / "onnx" / f"{services.identity.name}-{sha[:16]}-{kind}{suffix}.onnx"


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


def _quantize(src: Path, path: Path) -> str:
    from vpetl.formats.onnx_quant import quantize_graph  # onnx + onnxruntime.quantization: only when asked for

    quantize_graph(src, path, "int8")
    return _hash_and_record(path)


def _merge(services: Services, adapter: bytes, path: Path) -> str:
    from vpetl.formats.onnx_merge import export_merged_onnx

    export_merged_onnx(services.require_backbone(), adapter, path)
    return _hash_and_record(path)


async def _once(request: Request, path: Path, build: Callable[[], Awaitable[str]]) -> str:
    """The sha256 of ``path``, built by ``build`` if missing (one build per file at a time)."""
    sha = _cached_sha256(path)
    if sha is not None:
        return sha
    locks: dict[str, asyncio.Lock] | None = getattr(request.app.state, "onnx_locks", None)
    if locks is None:  # per app, not per module: no process-global state
        locks = request.app.state.onnx_locks = {}
    lock = locks.setdefault(path.name, asyncio.Lock())
    async with lock:
        sha = _cached_sha256(path)
        if sha is None:
            sha = await asyncio.to_thread(_hash_and_record, path) if path.is_file() else None
        if sha is None:
            sha = await build()
    return sha


async def ensure_graph(
    request: Request, services: Services, family: str, quant: str = "fp32", adapter: tuple[str, bytes] | None = None
) -> tuple[Path, str]:
    """(path, sha256) of a graph, built once: the family's fp32 graph, its int8 copy, or a merged single-task
    graph for ``adapter`` = (sha256, bytes), optionally int8."""
    if adapter is not None:
        base = graph_path(services, family, "fp32", adapter[0])
        sha = await _once(request, base, lambda: asyncio.to_thread(_merge, services, adapter[1], base))
    else:
        base = graph_path(services, family)
        sha = await _once(request, base, lambda: asyncio.to_thread(_export, services, family, base))
    if quant == "fp32":
        return base, sha
    path = graph_path(services, family, quant, adapter[0] if adapter else None)
    return path, await _once(request, path, lambda: asyncio.to_thread(_quantize, base, path))


async def _task_adapter(services: Services, task: str, version: int | None) -> tuple[str, bytes, str]:
    """(sha256, bytes, method) of a task's adapter (current or ``version``); UnknownTask when it has none."""
    record, data = await services.store.get_bytes(task, version)
    return record.sha256, data, read_adapter_meta(data).method


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
        **error_responses(401, 403, 404, 409, 422),
    },
)
async def backbone_onnx(
    request: Request,
    services: ServicesDep,
    family: Annotated[Family, Query(description="adapter family the graph takes as inputs")] = "bapat",
    quant: Annotated[Quant, Query(description="int8: dynamic int8 weights (adapters stay float inputs)")] = "fp32",
    task: Annotated[
        str | None,
        Query(description="a single-task graph with this task's adapter merged in", json_schema_extra=TASK_SCHEMA),
    ] = None,
    version: Annotated[int | None, Query(ge=1, description="with task: that adapter version")] = None,
) -> Response:
    adapter = None
    if task is not None:
        # a merged graph holds the task's adapter: the caller needs what downloading that adapter needs
        principal(request).require("read")
        # the store's wording for a missing task: a hidden task and an absent one must read the same
        visible(request, _check_task(task), f"unknown task {task!r}")
        sha256, data, method = await _task_adapter(services, task, version)
        adapter = (sha256, data)
    elif version is not None:
        raise InvalidRequest("version needs task (a merged graph of that task's version)")
    path, sha = await ensure_graph(request, services, family, quant, adapter)
    headers = {"ETag": f'"{sha}"', "Cache-Control": "no-cache"}
    if _matches(request.headers.get("if-none-match"), sha):
        return Response(status_code=304, headers=headers)
    name = f"{services.identity.name}-{f'{task}-merged' if task else family}{'' if quant == 'fp32' else '-' + quant}"
    return FileResponse(path, media_type="application/octet-stream", headers=headers, filename=f"{name}.onnx")


@router.get(
    "/onnx/agreement",
    response_model=GraphAgreement,
    summary="Top-1 agreement of a graph variant with the fp32 graph on a task's validation clips (scope `read`)",
    dependencies=[require("read")],
    responses=error_responses(401, 403, 404, 409, 422),
)
async def backbone_onnx_agreement(
    request: Request,
    services: ServicesDep,
    task: Annotated[
        str, Query(description="the task whose adapter and validation clips are used", json_schema_extra=TASK_SCHEMA)
    ],
    quant: Annotated[Quant, Query(description="the variant's quantization")] = "int8",
    merged: Annotated[bool, Query(description="the task's merged single-task graph")] = False,
    family: Annotated[Family | None, Query(description="graph family (default: the adapter's method)")] = None,
) -> GraphAgreement:
    visible(request, _check_task(task), f"unknown task {task!r}")
    sha256, data, method = await _task_adapter(services, task, None)
    fam = family or method
    if fam not in FAMILY_NAMES:
        raise IncompatibleAdapter(f"task {task!r} uses {method!r}; pass family= (one of {', '.join(FAMILY_NAMES)})")
    if quant == "fp32" and not merged:
        raise InvalidRequest("the fp32 shared graph is the reference: ask for quant=int8 and/or merged=true")
    reference, _ = await ensure_graph(request, services, fam)
    variant, variant_sha = await ensure_graph(request, services, fam, quant, (sha256, data) if merged else None)
    clips = (await asyncio.to_thread(services.clips.list_clips, task, "val"))[:MAX_AGREEMENT_CLIPS]
    # one record per (variant, adapter, validation set): a clip uploaded later is a new measurement
    key = hashlib.sha256(" ".join([sha256, *(c.sha256 for c in clips)]).encode()).hexdigest()[:16]
    record = variant.with_suffix(f".agreement-{key}.json")
    if record.is_file():
        try:
            return GraphAgreement.model_validate_json(record.read_text())
        except ValueError:
            pass  # a damaged record is recomputed
    result = await asyncio.to_thread(_agreement, services, fam, reference, variant, data, clips)
    answer = GraphAgreement(
        task=task, family=fam, quant=quant, merged=merged, graph_sha256=variant_sha, adapter_sha256=sha256, **result
    )
    tmp = record.with_suffix(".tmp")
    tmp.write_text(answer.model_dump_json())
    tmp.replace(record)
    return answer


def _agreement(
    services: Services, family: str, reference: Path, variant: Path, adapter: bytes, clips: list[Any]
) -> dict[str, Any]:
    from vpetl.formats.onnx import decode_adapter, make_layout, task_feeds
    from vpetl.formats.onnx_quant import agreement
    from vpetl.video import load_clip

    backbone = services.require_backbone()
    # the reference graph's inputs, folded exactly as the server's bank folds the adapter (make_layout's defaults
    # are the ones _export used)
    feeds = task_feeds(make_layout(backbone, family), decode_adapter(backbone, read_adapter(adapter)))
    arrays = {name: t.detach().float().numpy() for name, t in feeds.items()}
    decoded = (load_clip(c.read_bytes(), backbone.input_spec) for c in clips)  # (3, T, H, W) each
    return agreement(reference, variant, decoded, arrays)
