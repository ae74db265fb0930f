"""What the route modules share: OpenAPI helpers, the clip upload form and the clip decoder."""

from __future__ import annotations

import logging
from typing import Any

from server.uploads import UploadForm
from vpetl.protocol import ErrorResponse

logger = logging.getLogger(__name__)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for the given error statuses (body: ErrorResponse)."""
    return {status: {"model": ErrorResponse} for status in statuses}


def binary_body(description: str, *media_types: str, field: str | None = None) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its body itself (streamed, bounded) instead of via FastAPI."""
    content: dict[str, Any] = {m: {"schema": {"type": "string", "format": "binary"}} for m in media_types}
    if field is not None:
        content["multipart/form-data"] = {
            "schema": {
                "type": "object",
                "properties": {field: {"type": "string", "format": "binary"}},
                "required": [field],
            }
        }
    return {"requestBody": {"required": True, "description": description, "content": content}}


CLIP_FORM = UploadForm(field="clip", raw_types=("video/*", "application/octet-stream"), what="clip")


