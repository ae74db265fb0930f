"""One integration test under Ray Serve: the same API, served by an ingress deployment and two predictor replicas
with task affinity on (``VPETL_RAY_AFFINITY=1``): a task's requests keep going to the replica that holds it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import BACKBONE, db_url, flush, free_port, make_adapter, vpetl_executable

pytestmark = pytest.mark.integration


def test_ray_engine_serves_publishes_and_rolls_back(
    redis_server_url: str, clips: dict[str, bytes], tmp_path: Path
) -> None:
    url = db_url(redis_server_url, 7)
    flush(url)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VPETL_")}
    env.update({"VPETL_TORCH_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
                "VPETL_RAY_AFFINITY": "1"})
    cmd = [vpetl_executable(), "serve", "--engine", "ray", "--port", str(port), "--redis-url", url,
           "--backbone", BACKBONE, "--data-dir", str(tmp_path), "--max-wait-ms", "20", "--replicas", "2", "--json"]
    log = (tmp_path / "ray.log").open("wb")
    json_out = (tmp_path / "ray.jsonl").open("wb")  # --json: stdout holds JSON lines only, logs go to stderr
    proc = subprocess.Popen(cmd, stdout=json_out, stderr=log, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "ray.log").read_text()
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("ray engine not ready:\n" + (tmp_path / "ray.log").read_text()[-3000:])
        with httpx.Client(base_url=base, timeout=60) as client:
            _ready_line_and_console(tmp_path / "ray.jsonl", base, client)
            first = client.put("/adapters/demo", files={"adapter": ("a.safetensors", make_adapter("demo", seed=1))})
            assert first.status_code == 201, first.text
            body = {"clip": ("c.mp4", clips["ok"], "video/mp4")}
            r1 = client.post("/predict", params={"task": "demo"}, files=body)
            assert r1.status_code == 200, r1.text
            assert r1.json()["version"] == 1 and r1.json()["adapter_sha256"] == first.json()["sha256"]
            # affinity: once a replica holds the task, its requests keep going there (both replicas are up)
            deadline = time.monotonic() + 60
            while len(client.get("/readyz").json()["replicas"]) < 2:
                assert time.monotonic() < deadline, "the second replica never reported"
                time.sleep(0.5)
            served_by = {client.post("/predict", params={"task": "demo"}, files=body).json()["replica"]
                         for _ in range(12)}  # fmt: skip
            assert served_by == {r1.json()["replica"]}, served_by
            second = client.put("/adapters/demo", files={"adapter": ("a.safetensors", make_adapter("demo", seed=2))})
            assert second.status_code == 201
            t0 = time.monotonic()
            while True:  # the replica learns of v2 from the event channel (or the pointer check) within a second
                r2 = client.post("/predict", params={"task": "demo"}, files=body)
                if r2.json()["version"] == 2:
                    break
                assert time.monotonic() - t0 < 5, r2.json()
            assert r2.json()["adapter_sha256"] == second.json()["sha256"]
            assert r2.json()["predictions"] != r1.json()["predictions"]
            assert client.post("/adapters/demo/rollback", json={"version": 1}).status_code == 200
            t0 = time.monotonic()
            while True:  # no version pinned: the ingress and the replica must follow the rollback by themselves
                r3 = client.post("/predict", params={"task": "demo"}, files=body)
                if r3.json()["version"] == 1:
                    break
                assert time.monotonic() - t0 < 5, r3.json()
            assert r3.json()["predictions"] == r1.json()["predictions"]
            assert r3.json()["adapter_sha256"] == first.json()["sha256"]
            missing = client.post("/predict", params={"task": "nope"}, files=body)
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_task"
            _keys_work_on_the_ingress(url, client, body)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        json_out.close()
    events = [json.loads(line) for line in (tmp_path / "ray.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["ready", "stopped"]


def _ready_line_and_console(path: Path, base: str, client: httpx.Client) -> None:
    """``--json`` on the Ray engine: the ready line once ``serve.run`` returned; the web console is served by the
    ingress like every other route."""
    deadline = time.monotonic() + 30
    while not path.read_text().strip():
        assert time.monotonic() < deadline, "no --json ready line"
        time.sleep(0.2)
    ready = json.loads(path.read_text().splitlines()[0])
    assert ready["event"] == "ready" and ready["engine"] == "ray" and ready["url"] == base
    assert ready["replicas"] == 2 and ready["backbone_sha256"] == client.get("/backbone").json()["sha256"]
    page = client.get("/ui/")
    assert page.status_code == 200 and 'src="app.js"' in page.text
    assert client.get("/ui/app.js").headers["content-type"].startswith("text/javascript")


def _keys_work_on_the_ingress(url: str, client: httpx.Client, body: dict[str, object]) -> None:
    """API keys on the Ray engine: the ingress replicas run the same auth as the local server (issue 21)."""
    from vpetl.store.apikeys import ApiKeyStore
    from vpetl.store.clients import redis_client

    store = ApiKeyStore(redis_client(url))
    try:
        token, record = store.create("ray device", ["predict"], ["demo"])
        device = {"Authorization": f"Bearer {token}"}
        t0 = time.monotonic()
        while client.post("/predict", params={"task": "demo"}, files=body).status_code != 401:
            assert time.monotonic() - t0 < 1.0, "the first key did not close the ingress to anonymous callers"
            time.sleep(0.02)
        r = client.post("/predict", params={"task": "demo"}, files=body, headers=device)
        assert r.status_code == 200 and r.json()["version"] == 1, r.text
        r = client.put("/adapters/demo", files={"adapter": ("a.safetensors", b"x")}, headers=device)
        assert (r.status_code, r.json()["error"]["code"]) == (403, "insufficient_scope")
        r = client.post("/predict", params={"task": "other"}, files=body, headers=device)
        assert (r.status_code, r.json()["error"]["code"]) == (404, "unknown_task")  # outside its pattern
        store.revoke(record.id)
        t0 = time.monotonic()
        while client.post("/predict", params={"task": "demo"}, files=body, headers=device).status_code != 403:
            assert time.monotonic() - t0 < 1.0, "the revocation did not reach the ingress within a second"
            time.sleep(0.02)
    finally:
        store.redis.close()
