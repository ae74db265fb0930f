"""Hardening of a server without an admin token (``vpetl up``), and of bodies read before auth: the loopback
guard (Host allow-list against DNS rebinding, Origin / Fetch-metadata check against cross-site writes), the full
``Allow`` header on 405, and ``POST /jobs`` answering 401 before it reads its body. In-process (no backbone): none
of these paths reach the services; the open-mode app reads the (empty) API key list from a real Redis once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from server.app import build_app
from server.metrics import Metrics
from server.middleware import host_name
from server.settings import Settings
from tests.server.conftest import db_url, flush
from vpetl.store import async_redis_client

UNREACHABLE = "redis://127.0.0.1:1/0"


def _app(admin_token: str | None = None, host: str = "127.0.0.1", redis_url: str = UNREACHABLE) -> FastAPI:
    # the key store: with an admin token, only a key-shaped token would reach it (none below does); in open mode
    # the first request reads the key list (empty: no keys, no token, open) from the Redis at `redis_url`
    store = SimpleNamespace(redis=async_redis_client(redis_url))
    services = SimpleNamespace(settings=Settings(admin_token=admin_token, host=host), metrics=Metrics(), store=store)
    return build_app(services)  # type: ignore[arg-type]  # no lifespan is run: nothing below reaches the services


@pytest.fixture(scope="module")
def open_client(redis_server_url: str) -> Iterator[TestClient]:
    url = db_url(redis_server_url, 3)
    flush(url)
    yield TestClient(_app(redis_url=url), base_url="http://127.0.0.1:8000", raise_server_exceptions=False)
    flush(url)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:8000", "127.0.0.1"), ("[::1]:8000", "::1"), ("LocalHost", "localhost"), ("::1", "::1"), ("[", "")],
)
def test_host_name(value: str, expected: str) -> None:
    assert host_name(value) == expected


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1:8000", "[::1]:8000", "localhost"])
def test_loopback_names_are_served(open_client: TestClient, host: str) -> None:
    assert open_client.get("/healthz", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("host", ["evil.example:8000", "127.0.0.1.nip.io", "testserver", "0.0.0.0:8000", ""])
def test_dns_rebinding_names_are_refused(open_client: TestClient, host: str) -> None:
    r = open_client.get("/healthz", headers={"Host": host})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host"
    assert r.headers["x-request-id"]  # refused inside the request context: logged and counted like any answer


def test_the_bound_host_is_served_too() -> None:
    client = TestClient(_app(host="127.0.0.2"), base_url="http://127.0.0.2:9000")
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},  # sandboxed iframes, file:// pages
        {"Origin": "http://127.0.0.1:3000"},  # another local origin (a dev server on another port)
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
def test_cross_site_writes_are_refused_before_routing(open_client: TestClient, headers: dict[str, str]) -> None:
    for method, path in [("POST", "/predict?task=demo"), ("PUT", "/adapters/demo"), ("DELETE", "/adapters/demo"),
                         ("POST", "/jobs")]:  # fmt: skip
        r = open_client.request(method, path, content=b"x", headers={"Content-Type": "text/plain", **headers})
        assert r.status_code == 403 and r.json()["error"]["code"] == "cross_origin_refused", (method, path, r.text)


def test_same_origin_and_non_browser_writes_pass_the_guard(open_client: TestClient) -> None:
    # they reach the route (which then refuses an unknown media type): the guard let them through
    for headers in [{}, {"Origin": "http://127.0.0.1:8000"}, {"Sec-Fetch-Site": "same-origin"}]:
        r = open_client.put("/adapters/demo", content=b"x", headers={"Content-Type": "text/plain", **headers})
        assert r.status_code == 415, r.text


def test_reads_need_no_origin_check(open_client: TestClient) -> None:
    assert open_client.get("/healthz", headers={"Origin": "http://evil.example"}).status_code == 200


def test_with_an_admin_token_the_guard_is_off() -> None:
    client = TestClient(_app(admin_token="tok"), base_url="http://api.example.com", raise_server_exceptions=False)
    assert client.get("/healthz").status_code == 200
    r = client.put("/adapters/demo", content=b"x", headers={"Origin": "http://evil.example"})
    assert r.status_code == 401  # the token check stands in for it


def test_405_lists_every_method_of_the_path(open_client: TestClient) -> None:
    r = open_client.patch("/adapters/demo")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert set(r.headers["allow"].split(", ")) == {"GET", "PUT", "DELETE"}
    r = open_client.delete("/adapters")
    assert r.status_code == 405 and r.headers["allow"] == "GET"


def test_jobs_refuse_without_a_token_before_reading_the_body() -> None:
    """FastAPI reads a declared body before it runs dependencies; ``POST /jobs`` must answer 401 first."""
    app = _app(admin_token="tok")
    received: list[int] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        received.append(1)
        return {"type": "http.request", "body": b"{" * 1024, "more_body": True}  # an endless body

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "http_version": "1.1", "method": "POST", "path": "/jobs", "raw_path": b"/jobs",
        "query_string": b"", "root_path": "", "scheme": "http", "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 5000),
        "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json")],
    }  # fmt: skip
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 5))
    assert sent[0]["status"] == 401 and not received


def test_jobs_body_is_bounded() -> None:
    client = TestClient(_app(admin_token="tok"), base_url="http://127.0.0.1", raise_server_exceptions=False)
    auth = {"Authorization": "Bearer tok", "Content-Type": "application/json"}
    r = client.post("/jobs", content=b" " * (65 * 1024), headers=auth)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    r = client.post("/jobs", content=b'{"task": "demo", "epochs": 0}', headers=auth)
    assert r.status_code == 422 and "epochs" in r.json()["error"]["message"]
