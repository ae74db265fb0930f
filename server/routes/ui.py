"""``/ui``: the operators' web console — static files shipped in the package (``server/static``), no build chain.

The console is a client of the public HTTP API only: every figure it shows comes from ``/adapters``, ``/jobs``,
``/datasets``, ``/predict``, ``/backbone``, ``/readyz`` and ``/metrics``, called from the browser with the token the
operator typed (``Authorization: Bearer …``, kept in ``sessionStorage``). So it works on every engine (the Ray
ingress builds this same app) and under whichever token scheme the API enforces. These routes stay out of the
OpenAPI schema: they are pages, not API.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from vpetl.errors import VpetlError


class ConsoleFileNotFound(VpetlError):
    code = "not_found"
    http_status = 404


router = APIRouter(prefix="/ui", tags=["ui"], include_in_schema=False)

# The only files served: what ships in server/static, listed once at import. A request names a key of this table,
# never a path, so nothing a client sends reaches the file system.
_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".js": "text/javascript; charset=utf-8"}  # fmt: skip
STATIC = files("server").joinpath("static")
MEDIA_TYPES = {f.name: _TYPES[Path(f.name).suffix] for f in STATIC.iterdir() if Path(f.name).suffix in _TYPES}
# Scripts and styles from this origin only, no inline script, no framing (the pages hold rollback/delete buttons).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: an upgraded server must not run yesterday's script
}


def _read(name: str) -> bytes:
    return STATIC.joinpath(name).read_bytes()


@router.get("")
async def console_root() -> RedirectResponse:
    # relative module URLs in index.html resolve against /ui/, not /
    return RedirectResponse("/ui/", status_code=307)


@router.get("/")
async def console_index() -> Response:
    return Response(_read("index.html"), media_type=MEDIA_TYPES["index.html"], headers=SECURITY_HEADERS)


@router.get("/{name}")
async def console_file(name: str) -> Response:
    media_type = MEDIA_TYPES.get(name)
    if media_type is None:
        raise ConsoleFileNotFound(f"no console file {name[:64]!r}")
    return Response(_read(name), media_type=media_type, headers=SECURITY_HEADERS)
