"""A real ``vpetl serve`` under stress: a flood beyond the bounded queue (503 + Retry-After, then recovery), and
its Redis stopped and restarted mid-run (cached adapters keep serving; the server reconnects)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from tests.server.conftest import BACKBONE, ServerProcess, error_code, make_adapter
from vpetl.store import EmbeddedRedis

pytestmark = pytest.mark.integration

MP4 = {"Content-Type": "video/mp4"}
OCTET = {"Content-Type": "application/octet-stream"}
FLOOD = 40


@pytest.fixture(scope="module")
def redis_tcp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """This module's own redis-server on a loopback port, so a test can stop it and restart it on the same port."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis_tcp"), port=0).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(redis_tcp: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("stress_server")
    args = ["--redis-url", redis_tcp.url, "--backbone", BACKBONE, "--data-dir", str(tmp / "data")]
    args += ["--max-queue", "2", "--max-batch-size", "1"]
    proc = ServerProcess(args, tmp / "server.log").start()  # no admin token: loopback, writes open
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        yield client


def publish(http: httpx.Client, task: str, seed: int) -> int:
    r = http.put(f"/adapters/{task}", content=make_adapter(task, seed=seed), headers=OCTET)
    assert r.status_code == 201, r.text
    return int(r.json()["version"])


def predict(http: httpx.Client, task: str, clip: bytes) -> httpx.Response:
    return http.post("/predict", params={"task": task}, content=clip, headers=MP4)


def test_flood_beyond_the_queue_bound_sheds_load_then_recovers(
    server: ServerProcess, http: httpx.Client, clips: dict[str, bytes]
) -> None:
    publish(http, "flood", seed=1)
    assert predict(http, "flood", clips["ok"]).status_code == 200  # adapter loaded: the flood measures the queue

    async def flood() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=FLOOD, max_keepalive_connections=FLOOD)
        async with httpx.AsyncClient(base_url=server.url, timeout=60.0, limits=limits) as client:
            one = lambda: client.post("/predict", params={"task": "flood"}, content=clips["ok"], headers=MP4)  # noqa: E731
            return await asyncio.gather(*(one() for _ in range(FLOOD)))

    responses = asyncio.run(flood())
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[503] >= 1, f"a queue bound of 2 should shed some of {FLOOD} concurrent requests: {statuses}"
    assert statuses[200] >= 1, statuses
    for r in responses:
        if r.status_code == 503:
            assert error_code(r) == "overloaded"
            assert r.headers["retry-after"] == "1"
    # recovery: once the burst is over, requests succeed again
    time.sleep(0.2)
    r = predict(http, "flood", clips["ok"])
    assert r.status_code == 200 and r.json()["task"] == "flood", r.text
    text = http.get("/metrics").text
    assert any(line.startswith("vpetl_predictions_total") and 'status="503"' in line for line in text.splitlines())


def test_redis_restart_mid_run(
    server: ServerProcess, http: httpx.Client, redis_tcp: EmbeddedRedis, clips: dict[str, bytes]
) -> None:
    publish(http, "steady", seed=2)
    first = predict(http, "steady", clips["ok"])
    assert first.status_code == 200 and first.json()["version"] == 1
    port = redis_tcp.port
    redis_tcp.stop()
    try:
        # a cached adapter keeps serving while Redis is gone: no request path touches Redis for it (one that did
        # would fail — Redis stays down for the whole loop — so a 200 is the proof, whatever the host's speed)
        for _ in range(5):
            r = predict(http, "steady", clips["ok"])
            assert r.status_code == 200, r.text
            assert r.json()["adapter_sha256"] == first.json()["adapter_sha256"]
        r = http.get("/readyz")
        assert (r.status_code, error_code(r)) == (503, "not_ready")
        assert "redis" in r.json()["error"]["message"]
        r = http.get("/adapters")  # needs Redis: a 503 with a stable code once the client gives up, never a 500
        assert (r.status_code, error_code(r)) == (503, "store_unavailable")
        assert r.headers["retry-after"] == "1"
    finally:
        redis_tcp.start()  # same port, same directory: the AOF brings the data back
    assert redis_tcp.port == port
    deadline = time.monotonic() + 15
    while http.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the server did not reconnect to the restarted Redis"
        time.sleep(0.2)
    assert predict(http, "steady", clips["ok"]).status_code == 200
    assert publish(http, "steady", seed=3) == 2  # the store kept version 1 across the restart
    deadline = time.monotonic() + 5
    while (r := predict(http, "steady", clips["ok"])).json()["version"] != 2:
        assert time.monotonic() < deadline, "a version published after the restart is not served"
        time.sleep(0.05)
    listed = {a["task"]: a for a in http.get("/adapters").json()["adapters"]}
    assert listed["steady"]["num_versions"] == 2
