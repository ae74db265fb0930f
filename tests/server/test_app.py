"""Fast in-process tests of the app factory, services, error mapping, upload parsing and the ``serve`` CLI
(FastAPI's TestClient; the real-process tests are in test_http_server.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from starlette.requests import Request
from typer.testing import CliRunner

from server.app import build_app
from server.cli import app as cli_app
from server.errors import vpetl_error_response
from server.services import Services, create_services, redact_url
from server.settings import Settings
from server.uploads import UploadForm, read_upload
from tests.server.conftest import BACKBONE, db_url, error_code, flush, make_adapter
from vpetl.errors import InvalidRequest, Overloaded, TooLarge, Unauthorized, UnsupportedMediaType


@pytest.fixture(scope="module")
def services(redis_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    url = db_url(redis_server_url, 5)
    flush(url)
    settings = Settings(
        redis_url=url, backbone=BACKBONE, data_dir=tmp_path_factory.mktemp("app_data"), admin_token="tok"
    )
    built = create_services(settings)
    try:
        yield built
    finally:
        built.close()
        flush(url)


@pytest.fixture(scope="module")
def app(services: Services) -> FastAPI:
    app = build_app(services)
    boom = APIRouter()

    @boom.get("/test-only/boom")
    async def explode() -> dict[str, str]:
        raise RuntimeError("a bug")

    app.include_router(boom)
    return app


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as client:
        client.headers["Authorization"] = "Bearer tok"  # an admin token is configured: every route needs it
        yield client


def test_every_route_declares_its_response(app: FastAPI) -> None:
    paths = app.openapi()["paths"]
    documented = {(m.upper(), path) for path, ops in paths.items() for m in ops}
    for expected in [
        ("POST", "/predict"),
        ("GET", "/adapters"),
        ("GET", "/adapters/{task}"),
        ("GET", "/adapters/{task}/download"),
        ("PUT", "/adapters/{task}"),
        ("POST", "/adapters/{task}/rollback"),
        ("DELETE", "/adapters/{task}"),
        ("POST", "/datasets/{task}/clips"),
        ("GET", "/datasets/{task}"),
        ("GET", "/backbone"),
        ("GET", "/backbone/onnx"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
    ]:
        assert expected in documented, expected
    for path, ops in paths.items():
        if path.startswith("/test-only"):
            continue
        for method, op in ops.items():
            ok = next((r for code, r in op["responses"].items() if code.startswith("2")), None)
            assert ok is not None, (method, path)
            schemas = [c.get("schema", {}) for c in ok.get("content", {}).values()]
            # a concrete model ($ref) or a declared binary/text body, never an untyped "any"
            assert schemas and all(sc.get("$ref") or sc.get("type") == "string" for sc in schemas), (method, path)
    predict = paths["/predict"]["post"]
    assert "multipart/form-data" in predict["requestBody"]["content"]
    assert predict["responses"]["415"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")


def test_an_unexpected_exception_is_a_logged_500_with_a_request_id(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        r = client.get("/test-only/boom", headers={"X-Request-ID": "bug-1"})
    assert (r.status_code, error_code(r)) == (500, "internal_error")
    assert "a bug" not in r.text  # details stay in the log
    assert r.headers["x-request-id"] == "bug-1"
    assert any("bug-1" in rec.getMessage() for rec in caplog.records)


def test_validation_errors_and_unknown_routes_use_the_error_contract(client: TestClient) -> None:
    r = client.post("/predict?task=x&topk=nope", content=b"x", headers={"Content-Type": "video/mp4"})
    assert (r.status_code, error_code(r)) == (422, "invalid_request")
    assert "topk" in r.json()["error"]["message"]
    r = client.get("/nothing/here")
    assert (r.status_code, error_code(r)) == (404, "not_found")
    r = client.put("/backbone")
    assert (r.status_code, error_code(r)) == (405, "method_not_allowed")


def test_auth_in_process(client: TestClient) -> None:
    data = make_adapter("inproc", seed=11)
    r = client.put("/adapters/inproc", content=data, headers={"Content-Type": "application/octet-stream",
                                                               "Authorization": ""})  # fmt: skip
    assert (r.status_code, error_code(r)) == (401, "unauthorized")
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = client.put("/adapters/inproc", content=data, headers={"Content-Type": "application/octet-stream",
                                                               "Authorization": "Bearer nope"})  # fmt: skip
    assert (r.status_code, error_code(r)) == (403, "forbidden")
    r = client.put("/adapters/inproc", content=data, headers={"Content-Type": "application/octet-stream",
                                                               "Authorization": "Bearer tok"})  # fmt: skip
    assert r.status_code == 201 and r.json()["version"] == 1
    assert client.get("/adapters/inproc").json()["num_versions"] == 1


def test_the_lifespan_can_run_twice(redis_server_url: str, tmp_path: Path, clips: dict[str, bytes]) -> None:
    """One Services object through two app lifespans in turn (two event loops): the store reconnects and the
    predictor restarts in the new loop."""
    url = db_url(redis_server_url, 6)
    flush(url)
    built = create_services(Settings(redis_url=url, backbone=BACKBONE, data_dir=tmp_path))
    app = build_app(built)
    try:
        for run in range(2):
            with TestClient(app, base_url="http://127.0.0.1") as client:  # no token: loopback Host only
                assert client.get("/readyz").status_code == 200
                data = make_adapter("twice", seed=run)
                r = client.put("/adapters/twice", content=data, headers={"Content-Type": "application/octet-stream"})
                assert r.status_code == 201, r.text
                r = client.post("/predict?task=twice", content=clips["ok"], headers={"Content-Type": "video/mp4"})
                assert r.status_code == 200 and r.json()["version"] == run + 1, r.text
    finally:
        built.close()
        flush(url)


def test_error_headers() -> None:
    assert vpetl_error_response(Overloaded("full")).headers["retry-after"] == "1"
    assert vpetl_error_response(Unauthorized("who")).headers["www-authenticate"].startswith("Bearer")
    assert vpetl_error_response(TooLarge("big")).status_code == 413


def test_redact_url() -> None:
    assert redact_url("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert redact_url("redis://user:pw@host/0") == "redis://user:***@host/0"
    assert redact_url("unix:///tmp/r.sock?db=1") == "unix:///tmp/r.sock?db=1"


# ------------------------------------------------------------------------------------------------ uploads
FORM = UploadForm(field="clip", raw_types=("video/*", "application/octet-stream"), what="clip")


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        ("video/mp4", "raw"),
        ("Video/WebM; codecs=vp9", "raw"),
        ("application/octet-stream", "raw"),
        ("multipart/form-data; boundary=x", "multipart"),
        ("video/", None),
        ("video", None),
        ("videox/mp4", None),
        ("text/plain", None),
        ("", None),
        (None, None),
    ],
)
def test_upload_kind(content_type: str | None, kind: str | None) -> None:
    if kind is None:
        with pytest.raises(UnsupportedMediaType):
            FORM.kind(content_type)
    else:
        assert FORM.kind(content_type) == kind


def _request(body: bytes, content_type: str, chunk: int = 7) -> Request:
    """A Starlette request whose body arrives in small chunks without a Content-Length."""
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive() -> dict[str, object]:
        return messages.pop(0)

    scope = {"type": "http", "method": "POST", "headers": [(b"content-type", content_type.encode())]}
    return Request(scope, receive)  # type: ignore[arg-type]


def _multipart(parts: list[tuple[str, bytes]], boundary: str = "b0undary") -> bytes:
    out = b""
    for name, data in parts:
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="f"\r\n'.encode()
        out += b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def test_multipart_streaming_keeps_only_the_field() -> None:
    body = _multipart([("other", b"x" * 50), ("clip", b"VIDEO" * 10), ("clip", b"second")])
    got = asyncio.run(read_upload(_request(body, "multipart/form-data; boundary=b0undary"), FORM, limit=1000))
    assert got == b"VIDEO" * 10


def test_multipart_limits_and_errors() -> None:
    ct = "multipart/form-data; boundary=b0undary"
    with pytest.raises(TooLarge):
        asyncio.run(read_upload(_request(_multipart([("clip", b"v" * 101)]), ct), FORM, limit=100))
    with pytest.raises(InvalidRequest, match="no field 'clip'"):
        asyncio.run(read_upload(_request(_multipart([("video", b"v")]), ct), FORM, limit=100))
    with pytest.raises(InvalidRequest, match="boundary"):
        asyncio.run(read_upload(_request(b"--x", "multipart/form-data"), FORM, limit=100))
    with pytest.raises(TooLarge):
        asyncio.run(read_upload(_request(b"v" * 101, "video/mp4"), FORM, limit=100))
    assert asyncio.run(read_upload(_request(b"v" * 100, "video/mp4"), FORM, limit=100)) == b"v" * 100


# ------------------------------------------------------------------------------------------------ services
def test_embedded_redis_is_started_under_the_data_dir_and_stopped(tmp_path: Path) -> None:
    built = create_services(Settings(backbone=BACKBONE, data_dir=tmp_path, redis_url=None))
    server = built.embedded_redis
    assert server is not None and server.running
    assert built.redis_url.startswith("unix://") and (tmp_path / "redis").is_dir()

    async def use_then_close() -> bool:
        try:
            return await built.store.ping()
        finally:
            await built.aclose()  # in the loop that made the connections, as the app's lifespan does

    assert asyncio.run(use_then_close())
    assert not server.running


# ------------------------------------------------------------------------------------------------ serve CLI
@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in ("VPETL_ADMIN_TOKEN", "VPETL_HOST", "VPETL_ENGINE"):
        monkeypatch.delenv(name, raising=False)
    return CliRunner()


def test_serve_refuses_a_public_bind_without_a_token(runner: CliRunner) -> None:
    result = runner.invoke(cli_app, ["serve", "--host", "0.0.0.0", "--backbone", BACKBONE])
    assert result.exit_code == 2
    assert "VPETL_ADMIN_TOKEN" in result.output


def test_serve_rejects_invalid_settings(runner: CliRunner) -> None:
    result = runner.invoke(cli_app, ["serve", "--max-batch-size", "0"])
    assert result.exit_code == 2 and "max_batch_size" in result.output
    result = runner.invoke(cli_app, ["serve", "--engine", "kubernetes"])
    assert result.exit_code == 2 and "engine" in result.output
