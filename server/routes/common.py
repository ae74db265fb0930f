"""What every route module shares: the documented error responses for OpenAPI."""

from __future__ import annotations

from typing import Any

from vpetl.protocol import ErrorResponse


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
