"""``vpetl serve --dtype bf16`` against a real server process: it answers /predict like the fp32 server.

Both servers share one Redis database, so the bf16 server must present the backbone's fp32 identity (sha256) to
the registry and to the adapter files trained in fp32 (a bf16 hash would refuse them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import BACKBONE, LABELS, ServerProcess, db_url, flush, make_adapter

pytestmark = pytest.mark.integration

TOKEN = "dtype-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def servers(redis_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerProcess]]:
    url = db_url(redis_server_url, 14)
    flush(url)
    tmp = tmp_path_factory.mktemp("serve_dtype")
    procs: dict[str, ServerProcess] = {}
    try:
        for dtype in ("fp32", "bf16"):
            args = ["--redis-url", url, "--backbone", BACKBONE, "--data-dir", str(tmp / dtype), "--dtype", dtype]
            procs[dtype] = ServerProcess(args, tmp / f"{dtype}.log", env={"VPETL_ADMIN_TOKEN": TOKEN}).start()
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()
        flush(url)


def test_bf16_server_predicts_like_the_fp32_server(servers: dict[str, ServerProcess], clips: dict[str, bytes]) -> None:
    bearer = {"Authorization": AUTH["Authorization"]}  # every route needs the token once one is configured
    with httpx.Client(base_url=servers["fp32"].url, timeout=30.0, headers=bearer) as fp32, httpx.Client(
        base_url=servers["bf16"].url, timeout=30.0, headers=bearer
    ) as bf16:
        r = bf16.put("/adapters/cats", content=make_adapter("cats", seed=1), headers=AUTH)  # fp32-trained file
        assert r.status_code == 201, r.text
        assert fp32.get("/backbone").json()["sha256"] == bf16.get("/backbone").json()["sha256"]
        rounded = False  # bf16 really served: its scores are not bit-identical to fp32's
        for name in ("ok", "ok2", "ok3", "ok4"):
            answers = {}
            for dtype, client in (("fp32", fp32), ("bf16", bf16)):
                r = client.post("/predict", params={"task": "cats"}, content=clips[name],
                                headers={"Content-Type": "video/mp4"})  # fmt: skip
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["version"] == 1 and len(body["predictions"]) == len(LABELS)
                answers[dtype] = body["predictions"]
            assert answers["bf16"][0]["label"] == answers["fp32"][0]["label"], name  # same top-1
            assert abs(answers["bf16"][0]["score"] - answers["fp32"][0]["score"]) <= 0.05, name
            rounded |= answers["bf16"] != answers["fp32"]
        assert rounded


def test_invalid_dtype_is_refused_at_start_up(tmp_path: Path) -> None:
    import subprocess

    from tests.server.conftest import vpetl_executable

    r = subprocess.run([vpetl_executable(), "serve", "--dtype", "fp8", "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode != 0 and "dtype" in (r.stdout + r.stderr)


def test_a_bf16_server_exports_the_fp32_onnx_graph(servers: dict[str, ServerProcess]) -> None:
    """The edge graph is the registered fp32 backbone, whatever dtype the server computes in (not rounded weights
    cast back): the bf16 and the fp32 server export byte-identical graphs."""
    shas = {}
    for dtype in ("bf16", "fp32"):
        r = httpx.get(servers[dtype].url + "/backbone/onnx", timeout=120,
                      headers={"Authorization": AUTH["Authorization"]})  # fmt: skip
        assert r.status_code == 200, r.text[:300]
        shas[dtype] = r.headers["etag"]
    assert shas["bf16"] == shas["fp32"]
