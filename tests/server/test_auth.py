"""``server/auth.py`` in process: the allow-list, ``/metrics`` with and without ``metrics_public``, scopes and
patterns of a principal, and the key cache in open mode (real Redis; the real-server tests are
test_auth_routes.py and test_auth_revocation.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from server.app import build_app
from server.auth import ADMIN, Authenticator, Principal, is_public
from server.metrics import Metrics
from server.settings import Settings
from vpetl.errors import Forbidden, InsufficientScope, Unauthorized
from vpetl.store import async_redis_client
from vpetl.store.apikeys import ApiKeyStore
from vpetl.store.clients import redis_client

UNREACHABLE = "redis://127.0.0.1:1/0"


@pytest.mark.parametrize(
    ("path", "public"),
    [("/healthz", True), ("/readyz", True), ("/ui", True), ("/ui/", True), ("/ui/app.js", True), ("/docs", True),
     ("/openapi.json", True), ("/metrics", False), ("/uix", False), ("/adapters", False), ("/healthz/x", False),
     ("/keys", False), ("/", False)],
)  # fmt: skip
def test_the_allow_list(path: str, public: bool) -> None:
    assert is_public(path, Settings()) is public


def _app(**settings: object) -> TestClient:
    services = SimpleNamespace(settings=Settings(**settings), metrics=Metrics(),
                               store=SimpleNamespace(redis=async_redis_client(UNREACHABLE)))  # fmt: skip
    return TestClient(build_app(services), base_url="http://127.0.0.1", raise_server_exceptions=False)  # type: ignore[arg-type]


def test_metrics_need_the_admin_scope_unless_public() -> None:
    closed = _app(admin_token="tok")
    assert closed.get("/metrics").status_code == 401
    assert closed.get("/metrics", headers={"Authorization": "Bearer tok"}).status_code == 200
    scraped = _app(admin_token="tok", metrics_public=True)
    r = scraped.get("/metrics")
    assert r.status_code == 200 and "vpetl_" in r.text
    assert scraped.get("/adapters").status_code == 401  # only /metrics opened


def test_principal_scopes_and_patterns() -> None:
    device = Principal("key", frozenset({"predict"}), ("site-1-*", "lab"))
    assert device.allows("predict") and not device.allows("read") and not device.sees_all
    assert device.sees("site-1-x") and device.sees("lab") and not device.sees("lab2")
    with pytest.raises(InsufficientScope):
        device.require("publish")
    boss = Principal("key", frozenset({"admin"}), ("t",))
    assert boss.allows("publish") and not boss.sees("u")  # admin scope is every scope, still within its patterns
    assert ADMIN.sees_all and ADMIN.label == "admin"


def test_open_mode_until_a_key_exists(redis_url: str) -> None:
    async def run() -> list[object]:
        client = async_redis_client(redis_url)
        auth = Authenticator(Settings(), client)
        try:
            out: list[object] = [(await auth.authenticate(None)).kind]
            sync = redis_client(redis_url)
            try:
                token, _ = ApiKeyStore(sync).create("first", ["read"])
            finally:
                sync.close()
            await auth.cache.reload()  # what the event / periodic check does
            for header in (None, "Bearer wrong", f"Bearer {token}"):
                try:
                    out.append((await auth.authenticate(header)).kind)
                except (Unauthorized, Forbidden) as e:
                    out.append(e.code)
            return out
        finally:
            await client.aclose()

    assert asyncio.run(run()) == ["open", "unauthorized", "forbidden", "key"]
