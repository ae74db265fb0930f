"""``/backbone``: the frozen backbone's identity and input spec (what the edge must match), and its ONNX graph."""

from __future__ import annotations

from fastapi import APIRouter, Response

from server.deps import ServicesDep
from server.errors import NotFound
from server.routes.common import error_responses
from vpetl.protocol import BackboneInfo

router = APIRouter(prefix="/backbone", tags=["backbone"])


@router.get("", response_model=BackboneInfo, summary="Backbone name, sha256, input spec, feature width, size")
async def backbone_info(services: ServicesDep) -> BackboneInfo:
    backbone = services.backbone
    return BackboneInfo(
        name=backbone.name,
        family=backbone.family,
        sha256=services.bank.backbone_sha256,
        input_spec=backbone.input_spec,
        num_features=backbone.num_features,
        parameters=sum(p.numel() for p in backbone.frozen_state_dict().values()),
    )


@router.get(
    "/onnx",
    response_class=Response,
    response_model=None,
    summary="The backbone as ONNX with adapter weights as graph inputs (ETag)",
    responses={
        200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        **error_responses(404),
    },
)
async def backbone_onnx(services: ServicesDep) -> Response:
    # Placeholder until the ONNX export lands: a stable 404 code the edge can act on.
    raise NotFound(
        f"no ONNX export of backbone {services.backbone.name!r} on this server: run `vpetl export-onnx` "
        "and restart the server",
        code="onnx_not_exported",
    )
