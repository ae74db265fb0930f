"""``GET /backbone``: the frozen backbone's identity and input spec (what the edge must match).

``GET /backbone/onnx`` (the exported graph) lives in ``server/routes/onnx.py``.
"""

from __future__ import annotations

from fastapi import APIRouter

from server.deps import ServicesDep, require
from server.routes.common import error_responses
from vpetl.protocol import BackboneInfo

router = APIRouter(prefix="/backbone", tags=["backbone"])


# any key: every device needs to know what it must match
@router.get("", response_model=BackboneInfo, summary="Backbone name, sha256, input spec, feature width, size",
            dependencies=[require(None)], responses=error_responses(401, 403, 429))  # fmt: skip
async def backbone_info(services: ServicesDep) -> BackboneInfo:
    return services.identity.info()  # the deployment's registered backbone, the same on every replica
