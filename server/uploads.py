"""Bounded upload bodies: read a request body as a stream and stop as soon as it passes a limit.

Routes that take files (clips, adapters) never let FastAPI read the body for them: a ``Content-Length`` over the
limit is refused before a byte is read, and a body without one (chunked) is counted chunk by chunk and refused the
moment it passes the limit, so memory stays bounded by the limit whatever the client sends. Multipart bodies are
parsed *while* streaming (python-multipart's push parser); only the wanted field is kept.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from vpetl.errors import InvalidRequest, TooLarge, UnsupportedMediaType

# Room for the multipart envelope (boundaries, part headers, a few small fields) on top of the file limit.
MULTIPART_OVERHEAD = 64 * 1024

BodyKind = Literal["raw", "multipart"]


@dataclass(frozen=True)
class UploadForm:
    """What a route accepts: raw media types (``video/*`` style prefixes allowed) and a multipart field name."""

    field: str
    raw_types: tuple[str, ...]
    what: str  # "clip" or "adapter", for messages

    def kind(self, content_type: str | None) -> BodyKind:
        """Which body this is, or 415 with a message that says what to send."""
        media = (content_type or "").split(";", 1)[0].strip().lower()
        if media == "multipart/form-data":
            return "multipart"
        for allowed in self.raw_types:
            prefix = allowed[:-1] if allowed.endswith("/*") else None  # "video/*" -> "video/"
            if media == allowed or (prefix is not None and media.startswith(prefix) and media != prefix):
                return "raw"
        accepted = ", ".join(self.raw_types)
        shown = repr(media[:80]) if media else "no Content-Type"
        raise UnsupportedMediaType(
            f"cannot take a {self.what} sent as {shown}: send the raw bytes with Content-Type {accepted}, "
            f"or multipart/form-data with the file in field {self.field!r}"
        )


def check_content_length(request: Request, limit: int, what: str) -> None:
    """Refuse early on a declared size over ``limit`` (nothing is read)."""
    raw = request.headers.get("content-length")
    if raw is None:
        return
    try:
        declared = int(raw)
    except ValueError:
        raise InvalidRequest(f"invalid Content-Length {raw[:40]!r}") from None
    if declared > limit:
        raise TooLarge(f"the {what} is {declared:,} bytes; the limit is {limit:,} bytes")


async def iter_limited(request: Request, limit: int, what: str) -> AsyncIterator[bytes]:
    """The body's chunks; TooLarge as soon as more than ``limit`` bytes have arrived."""
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise TooLarge(f"the {what} is larger than the limit of {limit:,} bytes")
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise InvalidRequest(f"the client disconnected while sending the {what}") from None


async def read_limited(request: Request, limit: int, what: str) -> bytes:
    """The whole body (at most ``limit`` bytes)."""
    check_content_length(request, limit, what)
    body = bytearray()
    async for chunk in iter_limited(request, limit, what):
        body += chunk
    return bytes(body)


class _FieldCollector:
    """python-multipart callbacks that keep only the first part named ``field``."""

    def __init__(self, field: str, limit: int, what: str) -> None:
        self.field = field.encode()
        self.limit = limit
        self.what = what
        self.data: bytearray | None = None
        self._in_field = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._header_name.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._disposition = b""
        self._header_name.clear()
        self._header_value.clear()

    def _header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._disposition)
        self._in_field = params.get(b"name") == self.field and self.data is None
        if self._in_field:
            self.data = bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_field:
            assert self.data is not None
            self.data.extend(data[start:end])
            if len(self.data) > self.limit:
                raise TooLarge(f"the {self.what} is larger than the limit of {self.limit:,} bytes")

    def _part_end(self) -> None:
        self._in_field = False


async def read_upload(request: Request, form: UploadForm, limit: int) -> bytes:
    """The uploaded file's bytes, raw or from multipart field ``form.field``, with every bound enforced.

    Raises:
        UnsupportedMediaType: a Content-Type the route does not take. TooLarge: over ``limit``.
        InvalidRequest: a malformed multipart body or one without the field.
    """
    content_type = request.headers.get("content-type")
    kind = form.kind(content_type)
    if kind == "raw":
        return await read_limited(request, limit, form.what)
    _, params = parse_options_header(content_type or "")
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidRequest("multipart/form-data without a boundary parameter")
    envelope_limit = limit + MULTIPART_OVERHEAD
    check_content_length(request, envelope_limit, form.what)
    collector = _FieldCollector(form.field, limit, form.what)
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in iter_limited(request, envelope_limit, form.what):
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as e:
        raise InvalidRequest(f"malformed multipart body: {e}") from e
    if collector.data is None:
        raise InvalidRequest(f"the multipart body has no field {form.field!r} (the {form.what} file)")
    return bytes(collector.data)
