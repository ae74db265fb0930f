"""JSON request bodies that a route reads itself: bounded, and only after the route's dependencies (auth) ran.

FastAPI reads a body parameter in full before it solves the route's dependencies, so a declared ``JobRequest``
body would let a client without a token make the server buffer its whole body first. Routes that need the admin
check first declare the schema in ``openapi_extra`` (:func:`json_body_schema`) and read with :func:`read_json`.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from server.uploads import read_limited
from vpetl.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {key: _inline(value, defs) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(value, defs) for value in node]
    return node


def json_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its ``$defs`` inlined (an ``openapi_extra`` body has no components)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})
    return _inline(schema, defs)


async def read_json(request: Request, limit: int) -> bytes:
    """The body, at most ``limit`` bytes (413 beyond; a declared Content-Length over it is refused unread)."""
    return await read_limited(request, limit, "request body")


def parse_json_body(body: bytes, model: type[M]) -> M:
    """``body`` as ``model``, or 422 ``invalid_request`` naming the first problems."""
    try:
        return model.model_validate_json(body or b"null")
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors()[:3])
        raise InvalidRequest(f"invalid JSON body for {model.__name__}: {problems}") from None
