"""Two real ``vpetl serve`` processes on one Redis, started in open mode (no admin token, no keys): the first key
created with ``vpetl keys create`` closes both to anonymous callers, and ``vpetl keys revoke`` reaches both within a
second — through the key events, and through the periodic check alone when the event is lost."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
import redis
from typer.testing import CliRunner

from server.cli import app as cli_app
from tests.server.conftest import BACKBONE, ServerProcess, db_url, error_code, flush
from vpetl.store import keys as k
from vpetl.store.apikeys import KeyRecord

pytestmark = pytest.mark.integration

WITHIN_S = 1.0  # the bound for a revocation on every replica
POLL_S = 0.02


@pytest.fixture(scope="module")
def replicas(redis_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str]]]:
    url = db_url(redis_server_url, 8)
    flush(url)
    tmp = tmp_path_factory.mktemp("revocation")
    procs = []
    try:
        for name in ("a", "b"):
            args = ["--redis-url", url, "--backbone", BACKBONE, "--data-dir", str(tmp / name)]
            procs.append(ServerProcess(args, tmp / f"{name}.log").start())
        yield url, [p.url for p in procs]
    finally:
        for proc in procs:
            proc.stop()
        flush(url)


def _cli(*args: str) -> dict:
    result = CliRunner().invoke(cli_app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _until(servers: list[str], token: str | None, wanted: tuple[int, str | None]) -> list[float]:
    """Seconds until each server answers GET /backbone with ``wanted`` (status, error code or None)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    started, took = time.monotonic(), []
    for base in servers:
        while True:
            r = httpx.get(base + "/backbone", headers=headers, timeout=5)
            if (r.status_code, error_code(r) if r.status_code >= 400 else None) == wanted:
                took.append(time.monotonic() - started)
                break
            assert time.monotonic() - started < 5 * WITHIN_S, (base, r.status_code, r.text)
            time.sleep(POLL_S)
    return took


def test_keys_close_open_mode_and_revocations_reach_every_replica(replicas: tuple[str, list[str]]) -> None:
    url, servers = replicas
    assert all(httpx.get(s + "/adapters").status_code == 200 for s in servers)  # open mode: loopback, no keys
    created = _cli("keys", "create", "camera 1", "--scope", "predict", "--task", "site-1-*", "--redis-url", url)
    token = created["token"]
    assert max(_until(servers, None, (401, "unauthorized"))) <= WITHIN_S  # anonymous: closed on both
    assert max(_until(servers, token, (200, None))) <= WITHIN_S
    with httpx.Client(base_url=servers[1], headers={"Authorization": f"Bearer {token}"}) as device:
        r = device.get("/adapters")
        assert (r.status_code, error_code(r)) == (403, "insufficient_scope")

    revoked = _cli("keys", "revoke", created["key"]["prefix"], "--redis-url", url)
    assert revoked["state"] == "revoked"
    took = _until(servers, token, (403, "key_revoked"))
    assert max(took) <= WITHIN_S, took
    assert [e["method"] for e in _cli("audit", "--redis-url", url)["entries"]][:2] == ["DELETE", "POST"]


def test_a_revocation_whose_event_is_lost_still_lands_within_a_second(replicas: tuple[str, list[str]]) -> None:
    url, servers = replicas
    token = _cli("keys", "create", "camera 2", "--scope", "read", "--redis-url", url)["token"]
    assert max(_until(servers, token, (200, None))) <= WITHIN_S
    client = redis.Redis.from_url(url)
    try:
        key_id = token.split("_")[1]
        record = KeyRecord.model_validate_json(client.hget(k.API_KEYS, key_id))
        record.revoked_at = time.time()
        # what ApiKeyStore.revoke writes, minus the PUBLISH: only the periodic generation check can see it
        pipe = client.pipeline(transaction=True)
        pipe.hset(k.API_KEYS, key_id, record.model_dump_json())
        pipe.incr(k.API_KEYS_GENERATION)
        pipe.execute()
    finally:
        client.close()
    took = _until(servers, token, (403, "key_revoked"))
    assert max(took) <= WITHIN_S, took


def test_the_rate_limit_is_one_bucket_across_replicas(replicas: tuple[str, list[str]]) -> None:
    url, (a, b) = replicas
    token = _cli("keys", "create", "camera 3", "--scope", "read", "--rps", "0.2", "--burst", "2", "--redis-url", url)[
        "token"
    ]
    headers = {"Authorization": f"Bearer {token}"}
    assert max(_until([a, b], token, (200, None))) <= WITHIN_S  # known to both: each took a token (burst 2)
    r = httpx.get(b + "/backbone", headers=headers, timeout=5)  # the bucket the two requests above emptied
    assert (r.status_code, error_code(r)) == (429, "rate_limited")
    assert 1 <= int(r.headers["retry-after"]) <= 5  # the next token in up to 1 / 0.2 s
    r = httpx.get(a + "/backbone", headers=headers, timeout=5)
    assert r.status_code == 429
