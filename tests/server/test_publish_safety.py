"""Publish safety on a real server: an adapter for another backbone is refused at PUT without moving the pointer;
and if one reaches the store anyway (written by another process straight into Redis), the task keeps being served
from the last version that loaded, and /readyz and /metrics say so, until a loadable version is published."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import BACKBONE, ServerProcess, db_url, flush, make_adapter
from vpetl.backbones import create_backbone
from vpetl.store import AdapterStore

pytestmark = pytest.mark.integration

TOKEN = "safety-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def served(redis_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, str]]:
    url = db_url(redis_server_url, 13)
    flush(url)
    tmp = tmp_path_factory.mktemp("safety")
    args = ["--redis-url", url, "--backbone", BACKBONE, "--data-dir", str(tmp / "data")]
    proc = ServerProcess(args, tmp / "server.log", env={"VPETL_ADMIN_TOKEN": TOKEN}).start()
    try:
        with httpx.Client(base_url=proc.url, timeout=30, headers={"Authorization": AUTH["Authorization"]}) as client:
            yield client, url
    finally:
        proc.stop()
        flush(url)


def _predict(http: httpx.Client, clip: bytes) -> httpx.Response:
    return http.post("/predict", params={"task": "safe"}, content=clip, headers={"Content-Type": "video/mp4"})


def test_another_backbones_adapter_never_takes_a_task_down(
    served: tuple[httpx.Client, str], clips: dict[str, bytes], tmp_path: Path
) -> None:
    http, url = served
    other = make_adapter("safe", seed=1, backbone=create_backbone(BACKBONE, seed=9))  # other weights, same shapes
    assert http.put("/adapters/safe", content=make_adapter("safe", seed=1), headers=AUTH).status_code == 201
    first = _predict(http, clips["ok"])
    assert first.status_code == 200 and first.json()["version"] == 1

    # 1. at PUT: refused with 409, the pointer does not move
    r = http.put("/adapters/safe", content=other, headers=AUTH)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "incompatible_adapter")
    assert http.get("/adapters/safe").json()["version"] == 1

    # 2. written into the store by another process (no validation there): version 2 becomes current ...
    with AdapterStore(url) as store:
        assert store.publish("safe", other, {}).version == 2
    # ... but the task is still served, from version 1, and the server reports why
    for _ in range(3):
        r = _predict(http, clips["ok"])
        assert r.status_code == 200 and r.json()["version"] == 1, r.text
        assert r.json()["adapter_sha256"] == first.json()["adapter_sha256"]
    (replica,) = http.get("/readyz").json()["replicas"]
    failure = replica["load_failures"]["safe"]
    assert failure["version"] == 2 and failure["serving"] == 1 and "incompatible_adapter" in failure["error"]
    assert 'vpetl_replica_fallbacks{node="",replica="local"} 1.0' in http.get("/metrics").text
    pinned = http.post("/predict", params={"task": "safe", "version": 2}, content=clips["ok"],
                       headers={"Content-Type": "video/mp4"})  # fmt: skip
    assert (pinned.status_code, pinned.json()["error"]["code"]) == (409, "incompatible_adapter")  # asked for: refused

    # 3. a loadable version published: served, and the failure report is cleared
    assert http.put("/adapters/safe", content=make_adapter("safe", seed=3), headers=AUTH).json()["version"] == 3
    for _ in range(50):
        r = _predict(http, clips["ok"])
        if r.json()["version"] == 3:
            break
    assert r.json()["version"] == 3
    (replica,) = http.get("/readyz").json()["replicas"]
    assert replica["load_failures"] == {}
