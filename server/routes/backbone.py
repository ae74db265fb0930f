"""``GET /backbone``: the frozen backbone's identity and input spec (what the edge must match).

``GET /backbone/onnx`` (the exported graph) lives in ``server/routes/onnx.py``.
"""

from __future__ import annotations

from fastapi import APIRouter

from server.deps import ServicesDep
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
