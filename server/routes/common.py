"""What the route modules share: OpenAPI helpers, the clip upload form and the clip decoder."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from server.uploads import UploadForm
from vpetl.errors import InvalidVideo, VpetlError
from vpetl.protocol import ErrorResponse, InputSpec
from vpetl.video import load_clip

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


def decode_clip(data: bytes, spec: InputSpec) -> np.ndarray:
    """Decode + sample + preprocess exactly as the backbone's InputSpec says (runs in a worker thread)."""
    if not data:
        raise InvalidVideo("the clip is empty (0 bytes)")
    try:
        return load_clip(data, spec)
    except VpetlError:
        raise
    except (RuntimeError, ValueError, IndexError, EOFError, OSError) as e:
        # load_clip maps decoder failures to InvalidVideo; this is the net for one it did not foresee
        logger.warning("decoder raised %s for an upload; answered invalid_video", type(e).__name__)
        raise InvalidVideo(f"the clip could not be decoded ({type(e).__name__})") from e
