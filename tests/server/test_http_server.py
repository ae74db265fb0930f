"""The HTTP API against a real ``vpetl serve --engine local`` process (uvicorn) and a real redis-server.

One server for the module (admin token set, 1 MiB upload limits). Every refused request is checked for its stable
error code, and for leaving the adapter store exactly as it was.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest

from tests.server.conftest import (
    BACKBONE,
    LABELS,
    ServerProcess,
    db_url,
    error_code,
    flush,
    make_adapter,
    store_snapshot,
)

pytestmark = pytest.mark.integration

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OCTET = {"Content-Type": "application/octet-stream"}
MP4 = {"Content-Type": "video/mp4"}
LIMIT = 1024 * 1024  # --max-upload-mb 1 --max-adapter-mb 1
SERVE_WITHIN_S = 2.0


@pytest.fixture(scope="module")
def server(redis_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    url = db_url(redis_server_url, 4)
    flush(url)
    tmp = tmp_path_factory.mktemp("http_server")
    args = ["--redis-url", url, "--backbone", BACKBONE, "--data-dir", str(tmp / "data")]
    args += ["--max-upload-mb", "1", "--max-adapter-mb", "1"]
    proc = ServerProcess(args, tmp / "server.log", env={"VPETL_ADMIN_TOKEN": TOKEN}).start()
    try:
        yield proc
    finally:
        proc.stop()
        flush(url)


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    # the admin token is configured, so every route (reads too) needs it; tests of refusals override the header
    with httpx.Client(base_url=server.url, timeout=30.0, headers=AUTH) as client:
        yield client


@pytest.fixture(autouse=True)
def no_internal_errors(http: httpx.Client) -> Iterator[None]:
    """After every test of this module, whatever the order or selection (-k, --lf): no answer was a 500."""
    yield
    text = http.get("/metrics").text
    assert 'status="500"' not in text, [line for line in text.splitlines() if 'status="500"' in line]


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return {"v1": make_adapter("cats", seed=1), "v2": make_adapter("cats", seed=2)}


@pytest.fixture(scope="module")
def baseline(http: httpx.Client, files: dict[str, bytes]) -> str:
    """A task that exists during the bad-input tests (so 'unchanged' is about a non-empty store)."""
    r = http.put("/adapters/base", content=files["v1"], headers={**AUTH, **OCTET})
    assert r.status_code == 201, r.text
    return "base"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def predict(http: httpx.Client, task: str, clip: bytes, **params: Any) -> httpx.Response:
    return http.post("/predict", params={"task": task, **params}, content=clip, headers=MP4)


def wait_for_version(http: httpx.Client, task: str, clip: bytes, version: int) -> dict[str, Any]:
    """Predict until the server serves ``version`` (a publish/rollback must be picked up within 2 s)."""
    deadline = time.monotonic() + SERVE_WITHIN_S
    while True:
        r = predict(http, task, clip)
        assert r.status_code == 200, r.text
        if r.json()["version"] == version:
            return r.json()
        assert time.monotonic() < deadline, f"still serving version {r.json()['version']}, expected {version}"
        time.sleep(0.05)


def scores(body: dict[str, Any]) -> dict[str, float]:
    return {p["label"]: p["score"] for p in body["predictions"]}


# ----------------------------------------------------------------------------------------------- happy paths
def test_adapter_lifecycle_upload_predict_publish_rollback_delete(
    http: httpx.Client, clips: dict[str, bytes], files: dict[str, bytes]
) -> None:
    r = http.put("/adapters/cats", content=files["v1"], headers={**AUTH, **OCTET})
    assert r.status_code == 201, r.text
    assert r.json() == {"task": "cats", "version": 1, "sha256": sha(files["v1"])}
    assert r.headers["location"] == "/adapters/cats"

    r = predict(http, "cats", clips["ok"])
    assert r.status_code == 200, r.text
    v1 = r.json()
    assert (v1["task"], v1["version"], v1["adapter_sha256"]) == ("cats", 1, sha(files["v1"]))
    assert len(v1["predictions"]) == len(LABELS)  # topk 5 capped at the 3 classes
    assert {p["label"] for p in v1["predictions"]} == set(LABELS)
    assert sum(scores(v1).values()) == pytest.approx(1.0, abs=1e-4)
    assert set(v1["timing_ms"]) == {"decode", "queue", "model", "total"}
    assert all(v >= 0 for v in v1["timing_ms"].values())
    assert v1["timing_ms"]["total"] >= v1["timing_ms"]["decode"]

    multipart = http.post("/predict", params={"task": "cats", "topk": 1}, files={"clip": ("c.mp4", clips["ok"])})
    assert multipart.status_code == 200, multipart.text
    assert len(multipart.json()["predictions"]) == 1
    assert multipart.json()["predictions"][0] == v1["predictions"][0]

    r = http.put("/adapters/cats", content=files["v2"], headers={**AUTH, **OCTET})
    assert r.status_code == 201 and r.json()["version"] == 2, r.text
    v2 = wait_for_version(http, "cats", clips["ok"], 2)
    assert v2["adapter_sha256"] == sha(files["v2"])
    assert scores(v2) != pytest.approx(scores(v1), abs=1e-3)  # a different adapter really served it

    pinned = predict(http, "cats", clips["ok"], version=1).json()
    assert pinned["version"] == 1 and pinned["adapter_sha256"] == sha(files["v1"])
    assert scores(pinned) == pytest.approx(scores(v1), abs=1e-5)

    detail = http.get("/adapters/cats").json()
    assert [(v["version"], v["sha256"], v["current"]) for v in detail["versions"]] == [
        (1, sha(files["v1"]), False),
        (2, sha(files["v2"]), True),
    ]
    assert detail["method"] == "bapat" and detail["num_classes"] == 3 and detail["labels"] == LABELS
    assert detail["metrics"] == {"val_top1": pytest.approx(0.52)}
    assert detail["backbone"] == BACKBONE
    assert detail["backbone_sha256"] == http.get("/backbone").json()["sha256"]
    assert detail["size"] == len(files["v2"]) and detail["trainable_params"] > 0
    listed = {a["task"]: a for a in http.get("/adapters").json()["adapters"]}
    assert listed["cats"]["version"] == 2 and listed["cats"]["num_versions"] == 2

    r = http.post("/adapters/cats/rollback", json={"version": 1}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json() == {"task": "cats", "version": 1, "sha256": sha(files["v1"])}
    assert wait_for_version(http, "cats", clips["ok"], 1)["adapter_sha256"] == sha(files["v1"])
    detail = http.get("/adapters/cats").json()
    assert (detail["version"], detail["latest_version"]) == (1, 2)

    r = http.post("/adapters/cats/rollback", json={"version": 9}, headers=AUTH)
    assert (r.status_code, error_code(r)) == (404, "unknown_version")
    for body in (b"", b"{", b'{"version": 0}', b'{"version": "x"}', b'{"v": 1}', b"[1]"):
        r = http.post("/adapters/cats/rollback", content=body, headers={**AUTH, "Content-Type": "application/json"})
        assert (r.status_code, error_code(r)) == (422, "invalid_request"), body

    r = http.delete("/adapters/cats", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"task": "cats", "versions_removed": 2}, r.text
    deadline = time.monotonic() + SERVE_WITHIN_S
    while (r := predict(http, "cats", clips["ok"])).status_code == 200:
        assert time.monotonic() < deadline, "a deleted task is still served"
        time.sleep(0.05)
    assert (r.status_code, error_code(r)) == (404, "unknown_task")
    for path in ("/adapters/cats", "/adapters/cats/download"):
        r = http.get(path)
        assert (r.status_code, error_code(r)) == (404, "unknown_task")
    r = http.delete("/adapters/cats", headers=AUTH)
    assert (r.status_code, error_code(r)) == (404, "unknown_task")
    assert "cats" not in {a["task"] for a in http.get("/adapters").json()["adapters"]}


def test_download_etag_and_304(http: httpx.Client, files: dict[str, bytes]) -> None:
    assert http.put("/adapters/etag", content=files["v1"], headers={**AUTH, **OCTET}).status_code == 201
    r = http.get("/adapters/etag/download")
    assert r.status_code == 200 and r.content == files["v1"]
    etag = f'"{sha(files["v1"])}"'
    assert r.headers["etag"] == etag
    assert r.headers["content-type"] == "application/octet-stream"
    assert 'filename="etag-v1.safetensors"' in r.headers["content-disposition"]
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        r = http.get("/adapters/etag/download", headers={"If-None-Match": header})
        assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == etag, header
    r = http.get("/adapters/etag/download", headers={"If-None-Match": '"0000"'})
    assert r.status_code == 200 and r.content == files["v1"]

    assert http.put("/adapters/etag", content=files["v2"], headers={**AUTH, **OCTET}).status_code == 201
    r = http.get("/adapters/etag/download", headers={"If-None-Match": etag})
    assert r.status_code == 200 and r.content == files["v2"]  # the pointer moved: the old ETag is stale
    assert r.headers["etag"] == f'"{sha(files["v2"])}"'
    r = http.get("/adapters/etag/download", params={"version": 1})
    assert r.content == files["v1"] and r.headers["x-adapter-version"] == "1"
    r = http.get("/adapters/etag/download", params={"version": 1}, headers={"If-None-Match": etag})
    assert r.status_code == 304
    r = http.get("/adapters/etag/download", params={"version": 7})
    assert (r.status_code, error_code(r)) == (404, "unknown_version")
    r = http.get("/adapters/etag/download", params={"version": 0})
    assert (r.status_code, error_code(r)) == (422, "invalid_request")


def test_download_as_float16(http: httpx.Client, files: dict[str, bytes]) -> None:
    from vpetl.artifact import read_adapter

    assert http.put("/adapters/half", content=files["v1"], headers={**AUTH, **OCTET}).status_code == 201
    r = http.get("/adapters/half/download", params={"dtype": "float16"})
    assert r.status_code == 200 and len(r.content) < 0.6 * len(files["v1"])
    half, full = read_adapter(r.content), read_adapter(files["v1"])
    assert half.dtype == "float16" and half.meta == full.meta and set(half.tensors) == set(full.tensors)
    etag = f'"{sha(r.content)}"'
    assert r.headers["etag"] == etag and r.headers["x-adapter-sha256"] == sha(files["v1"])
    assert http.get("/adapters/half/download", params={"dtype": "float16"}).content == r.content  # deterministic
    r = http.get("/adapters/half/download", params={"dtype": "float16"}, headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.headers["etag"] == etag
    r = http.get("/adapters/half/download", params={"dtype": "float32"})
    assert r.content == files["v1"]  # already float32: the stored bytes
    r = http.get("/adapters/half/download", params={"dtype": "int8"})
    assert (r.status_code, error_code(r)) == (422, "invalid_request")


def test_backbone_health_and_metrics(http: httpx.Client, baseline: str, clips: dict[str, bytes]) -> None:
    info = http.get("/backbone").json()
    assert info["name"] == BACKBONE and len(info["sha256"]) == 64
    assert info["input_spec"]["num_frames"] == 4 and info["input_spec"]["size"] == 32
    assert info["num_features"] == 64 and info["parameters"] > 0
    # the ONNX route itself (export, ETag, 304) is tested in test_onnx_route.py; here: it is mounted and validates
    r = http.get("/backbone/onnx", params={"family": "nope"})
    assert (r.status_code, error_code(r)) == (422, "invalid_request")

    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz").json()
    assert (ready["status"], ready["checks"]) == ("ready", {"backbone": True, "redis": True})
    assert [r["backbone_sha256"] for r in ready["replicas"]] == [info["sha256"]]  # the local engine: one predictor
    batches_before = ready["replicas"][0]["batches"]
    assert predict(http, baseline, clips["ok"]).status_code == 200
    assert http.get("/readyz").json()["replicas"][0]["batches"] == batches_before + 1
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text

    def series(name: str, *labels: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith(name + "{") and all(x in line for x in labels)]

    assert series("vpetl_predictions_total", f'task="{baseline}"', 'status="200"')
    assert series("vpetl_predict_duration_seconds_bucket", f'task="{baseline}"', 'status="200"')
    for name in (
        "vpetl_http_requests_total",
        "vpetl_batch_size_bucket",
        "vpetl_queue_depth",
        "vpetl_queue_wait_seconds_bucket",
        "vpetl_adapter_cache_hits_total",
        "vpetl_adapter_cache_misses_total",
        "vpetl_adapter_cache_loads_total",
        "vpetl_adapter_cache_evictions_total",
        "vpetl_adapter_load_seconds_bucket",
    ):
        assert name in text, name
    assert 'route="/adapters/{task}"' in text or 'route="/predict"' in text

    docs = http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert "/predict" in http.get("/openapi.json").json()["paths"]


def test_request_id_on_every_response(http: httpx.Client) -> None:
    r = http.get("/healthz", headers={"X-Request-ID": "edge-42.a:b"})
    assert r.headers["x-request-id"] == "edge-42.a:b"
    generated = http.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32 and int(generated, 16) >= 0
    for bad in ("has space", "x" * 200, "ünï"):
        r = http.get("/healthz", headers={"X-Request-ID": bad.encode("utf-8")})
        assert r.headers["x-request-id"] != bad and len(r.headers["x-request-id"]) == 32
    for path in ("/no/such/route", "/adapters/nope", "/datasets/a%2Fb"):
        r = http.get(path, headers={"X-Request-ID": "rid-1"})
        assert r.status_code == 404 and r.headers["x-request-id"] == "rid-1"
    r = http.patch("/adapters", headers={"X-Request-ID": "rid-2"})
    assert (r.status_code, error_code(r)) == (405, "method_not_allowed")
    assert r.headers["x-request-id"] == "rid-2"


def test_datasets_upload_and_counts(http: httpx.Client, clips: dict[str, bytes]) -> None:
    def upload(clip: bytes, label: str = "walk", split: str | None = None, **kw: Any) -> httpx.Response:
        params = {"label": label, **({"split": split} if split else {})}
        return http.post("/datasets/moves/clips", params=params, content=clip, headers={**AUTH, **MP4, **kw})

    r = upload(clips["ok"])
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["task"], body["label"], body["split"], body["duplicate"]) == ("moves", "walk", "train", False)
    assert body["sha256"] == sha(clips["ok"]) and body["size"] == len(clips["ok"])
    assert upload(clips["ok"]).json()["duplicate"] is True
    assert upload(clips["ok2"], "run", "val").status_code == 201
    r = http.post(
        "/datasets/moves/clips", params={"label": "jump"}, files={"clip": ("c.mp4", clips["ok3"])}, headers=AUTH
    )
    assert r.status_code == 201, r.text
    expected = {"task": "moves", "counts": {"train": {"jump": 1, "walk": 1}, "val": {"run": 1}}, "total": 3}
    assert http.get("/datasets/moves").json() == expected

    for clip in ("truncated", "random", "empty", "text"):
        r = upload(clips[clip])
        assert (r.status_code, error_code(r)) == (400, "invalid_video"), clip
    for label, split in (("../etc", None), ("", None), ("é", None), ("x" * 100, None), ("walk", "test")):
        r = upload(clips["ok3"], label, split)
        assert (r.status_code, error_code(r)) == (422, "invalid_request"), (label, split)
    r = upload(clips["ok"], "run")  # the same bytes under another label: contradictory
    assert (r.status_code, error_code(r)) == (422, "invalid_request")
    r = upload(clips["ok"], **{"Content-Type": "text/plain"})
    assert (r.status_code, error_code(r)) == (415, "unsupported_media_type")
    r = http.post(
        "/datasets/moves/clips", params={"label": "walk"}, content=_chunks(LIMIT + 100_000), headers={**AUTH, **MP4}
    )
    assert (r.status_code, error_code(r)) == (413, "too_large")
    assert http.get("/datasets/moves").json() == expected
    empty = {"task": "empty-task", "counts": {"train": {}, "val": {}}, "total": 0}
    assert http.get("/datasets/empty-task").json() == empty


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("name", ["truncated", "random", "empty", "text"])
def test_bad_clips_are_400(http: httpx.Client, baseline: str, clips: dict[str, bytes], name: str) -> None:
    before = store_snapshot(http)
    r = predict(http, baseline, clips[name])
    assert (r.status_code, error_code(r)) == (400, "invalid_video")
    r = http.post("/predict", params={"task": baseline}, files={"clip": ("c.mp4", clips[name])})
    assert (r.status_code, error_code(r)) == (400, "invalid_video")
    assert store_snapshot(http) == before


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """A body without Content-Length (chunked transfer): the server must count it as it streams."""
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        sent += n
        yield b"\0" * n


def _raw_request(
    port: int, method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> tuple[int, dict[str, Any]]:
    """A hand-written request: declare a huge Content-Length, send (almost) nothing, read the answer."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(payload)


def test_too_large_uploads_are_413(
    http: httpx.Client, server: ServerProcess, baseline: str, clips: dict[str, bytes]
) -> None:
    before = store_snapshot(http)
    # declared size over the limit: refused before any of the body is read
    for method, path, headers in (
        ("POST", f"/predict?task={baseline}", {**AUTH, **MP4}),
        ("POST", f"/predict?task={baseline}", {**AUTH, "Content-Type": "multipart/form-data; boundary=xyz"}),
        ("POST", "/datasets/big/clips?label=a", {**AUTH, **MP4}),
        ("PUT", "/adapters/big", {**AUTH, **OCTET}),
    ):
        declared = {**headers, "Content-Length": str(50 * LIMIT)}
        status, body = _raw_request(server.port, method, path, declared, b"\0" * 1000)
        assert (status, body["error"]["code"]) == (413, "too_large"), path
    # streamed without a Content-Length: counted chunk by chunk, refused once past the limit
    r = http.post("/predict", params={"task": baseline}, content=_chunks(LIMIT + 200_000), headers=MP4)
    assert (r.status_code, error_code(r)) == (413, "too_large")
    r = http.put("/adapters/big", content=_chunks(LIMIT + 200_000), headers={**AUTH, **OCTET})
    assert (r.status_code, error_code(r)) == (413, "too_large")
    # a multipart part over the limit (its envelope is within the declared-size slack)
    r = http.post("/predict", params={"task": baseline}, files={"clip": ("c.mp4", b"\0" * (LIMIT + 10_000))})
    assert (r.status_code, error_code(r)) == (413, "too_large")
    # exactly at the limit is not too large (it is just not a video)
    r = predict(http, baseline, b"\0" * LIMIT)
    assert (r.status_code, error_code(r)) == (400, "invalid_video")
    assert http.get("/readyz").status_code == 200
    assert store_snapshot(http) == before


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/json", "image/png", "application/x-www-form-urlencoded", "video", None]
)
def test_wrong_content_types_are_415(
    http: httpx.Client, baseline: str, clips: dict[str, bytes], content_type: str | None
) -> None:
    before = store_snapshot(http)
    headers = {"Content-Type": content_type} if content_type else {}
    r = http.post("/predict", params={"task": baseline}, content=clips["ok"], headers=headers)
    assert (r.status_code, error_code(r)) == (415, "unsupported_media_type")
    r = http.put("/adapters/ctype", content=make_adapter(seed=4), headers={**AUTH, **headers})
    assert (r.status_code, error_code(r)) == (415, "unsupported_media_type")
    assert store_snapshot(http) == before


def test_unknown_task_version_and_bad_params(http: httpx.Client, baseline: str, clips: dict[str, bytes]) -> None:
    before = store_snapshot(http)
    r = predict(http, "no-such-task", clips["ok"])
    assert (r.status_code, error_code(r)) == (404, "unknown_task")
    r = predict(http, baseline, clips["ok"], version=99)
    assert (r.status_code, error_code(r)) == (404, "unknown_version")
    for params in ({"version": 0}, {"version": "x"}, {"topk": 0}, {"topk": "many"}):
        r = predict(http, baseline, clips["ok"], **params)
        assert (r.status_code, error_code(r)) == (422, "invalid_request"), params
    r = http.post("/predict", content=clips["ok"], headers=MP4)  # no task at all
    assert (r.status_code, error_code(r)) == (422, "invalid_request")
    r = http.post("/predict", params={"task": baseline}, files={"video": ("c.mp4", clips["ok"])})
    assert (r.status_code, error_code(r)) == (422, "invalid_request")  # multipart without the `clip` field
    no_boundary = {"Content-Type": "multipart/form-data"}
    r = http.post("/predict", params={"task": baseline}, content=b"--x\r\nbroken", headers=no_boundary)
    assert (r.status_code, error_code(r)) == (422, "invalid_request")  # no boundary
    assert store_snapshot(http) == before


BAD_TASK_NAMES = ["a/b", "..", "a..b", "Upper", "tâche", "x" * 1000, "", "-lead", "with space", "日本"]


@pytest.mark.parametrize("name", BAD_TASK_NAMES, ids=lambda n: repr(n[:12]))
def test_bad_task_names_are_4xx_with_a_stable_code(
    http: httpx.Client, baseline: str, clips: dict[str, bytes], files: dict[str, bytes], name: str
) -> None:
    before = store_snapshot(http)
    r = predict(http, name, clips["ok"])
    assert (r.status_code, error_code(r)) == (422, "invalid_request")
    # percent-encoded so that '/' and '..' reach the server as part of one path segment
    segment = quote(name, safe="").replace(".", "%2E") if name else "%20"
    for method, path, kw in (
        ("GET", f"/adapters/{segment}", {}),
        ("GET", f"/adapters/{segment}/download", {}),
        ("PUT", f"/adapters/{segment}", {"content": files["v1"], "headers": {**AUTH, **OCTET}}),
        ("POST", f"/adapters/{segment}/rollback", {"json": {"version": 1}, "headers": AUTH}),
        ("DELETE", f"/adapters/{segment}", {"headers": AUTH}),
        ("POST", f"/datasets/{segment}/clips?label=a", {"content": clips["ok"], "headers": {**AUTH, **MP4}}),
        ("GET", f"/datasets/{segment}", {}),
    ):
        r = http.request(method, path, **kw)
        # a name with '/' does not route (404 not_found); every other bad name is 422 invalid_request
        assert (r.status_code, error_code(r)) in {(422, "invalid_request"), (404, "not_found")}, (method, path)
        if "/" not in name and name.strip():
            assert r.status_code == 422, (method, path, r.text)
    assert store_snapshot(http) == before


def _nan_adapter(data: bytes) -> bytes:
    """A valid file with one float32 of tensor data overwritten by NaN (header untouched)."""
    (n,) = struct.unpack("<Q", data[:8])
    out = bytearray(data)
    out[8 + n : 8 + n + 4] = struct.pack("<f", float("nan"))
    return bytes(out)


def _reshaped_adapter() -> bytes:
    """Tensors whose shapes do not match the method config in the file's own metadata."""
    from vpetl.artifact import read_adapter, write_adapter

    good = read_adapter(make_adapter(seed=5))
    tensors = dict(good.tensors)
    name = next(k for k in sorted(tensors) if k.startswith("blocks.") and tensors[k].ndim == 2)
    tensors[name] = np.zeros((tensors[name].shape[0] + 3, tensors[name].shape[1]), np.float32)
    return write_adapter(tensors, good.meta)


def _other_backbone_weights() -> bytes:
    from vpetl.backbones import create_backbone

    return make_adapter(seed=6, backbone=create_backbone(BACKBONE, seed=123))  # same architecture, other weights


def _unknown_method() -> bytes:
    from vpetl.artifact import read_adapter, write_adapter

    good = read_adapter(make_adapter(seed=7))
    meta = good.meta.model_copy(update={"method_config": {**good.meta.method_config, "method": "nope"}})
    return write_adapter(good.tensors, meta)


BAD_ADAPTERS = {
    "pickle": (lambda: pickle.dumps({"head.weight": [[0.0]]}), 400, "invalid_adapter"),
    "torch-zip": (lambda: b"PK\x03\x04" + b"\0" * 200, 400, "invalid_adapter"),
    "truncated": (lambda: make_adapter(seed=8)[:50_000], 400, "invalid_adapter"),
    "giant-header": (lambda: struct.pack("<Q", 1 << 40) + b'{"a":' + b" " * 100, 400, "invalid_adapter"),
    "header-past-end": (lambda: struct.pack("<Q", 10_000) + b"{}", 400, "invalid_adapter"),
    "nan": (lambda: _nan_adapter(make_adapter(seed=9)), 400, "invalid_adapter"),
    "json": (lambda: b'{"method": "bapat"}', 400, "invalid_adapter"),
    "empty": (lambda: b"", 400, "invalid_adapter"),
    "wrong-shapes": (_reshaped_adapter, 409, "incompatible_adapter"),
    "other-backbone-hash": (_other_backbone_weights, 409, "incompatible_adapter"),
    "other-backbone": (lambda: make_adapter(seed=10, backbone="vit-tiny"), 409, "incompatible_adapter"),
    "unknown-method": (_unknown_method, 409, "incompatible_adapter"),
}


@pytest.mark.parametrize("case", sorted(BAD_ADAPTERS))
def test_bad_adapter_files_are_refused_and_nothing_is_stored(http: httpx.Client, baseline: str, case: str) -> None:
    build, status, code = BAD_ADAPTERS[case]
    data = build()
    before = store_snapshot(http)
    for task in (baseline, "fresh-task"):  # neither a new version of an existing task nor a new task
        r = http.put(f"/adapters/{task}", content=data, headers={**AUTH, **OCTET})
        assert (r.status_code, error_code(r)) == (status, code), (task, r.text)
    r = http.put("/adapters/fresh-task", files={"adapter": ("a.safetensors", data)}, headers=AUTH)
    assert (r.status_code, error_code(r)) == (status, code)
    assert store_snapshot(http) == before
    assert http.get("/adapters/fresh-task").status_code == 404


WRITE_ROUTES = [
    ("PUT", "/adapters/authz"),
    ("POST", "/adapters/base/rollback"),
    ("DELETE", "/adapters/base"),
    ("POST", "/datasets/authz/clips?label=walk"),
]


@pytest.mark.parametrize(("method", "path"), WRITE_ROUTES)
def test_write_routes_need_the_admin_token(
    http: httpx.Client, baseline: str, clips: dict[str, bytes], method: str, path: str
) -> None:
    before = store_snapshot(http)
    content, base = (clips["ok"], MP4) if "clips" in path else (b'{"version": 1}', {})
    anonymous = httpx.Client(base_url=str(http.base_url), timeout=30.0)  # no default Authorization header
    for missing in (None, "Basic dXNlcjpwYXNz", "Bearer", TOKEN):
        headers = {**base, **({"Authorization": missing} if missing is not None else {})}
        r = anonymous.request(method, path, content=content, headers=headers)
        assert (r.status_code, error_code(r)) == (401, "unauthorized"), missing
        assert r.headers["www-authenticate"].startswith("Bearer")
    for wrong in ("Bearer wrong", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "bearer nope"):
        r = http.request(method, path, content=content, headers={**base, "Authorization": wrong})
        assert (r.status_code, error_code(r)) == (403, "forbidden"), wrong
    assert store_snapshot(http) == before
    assert http.get("/datasets/authz").json()["total"] == 0
    assert anonymous.get("/adapters").status_code == 401  # reads need the token too (issue 21)
    anonymous.close()


def _counters(http: httpx.Client) -> dict[str, float]:
    """The unlabelled adapter-cache counters of /metrics, by name."""
    out = {}
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("vpetl_adapter_cache_") and "{" not in line:
            name, value = line.split()
            out[name] = float(value)
    return out


def test_cache_metrics_move_with_a_cold_load_and_a_warm_hit(http: httpx.Client, clips: dict[str, bytes]) -> None:
    r = http.put("/adapters/metered", content=make_adapter("metered", seed=7), headers={**AUTH, **OCTET})
    assert r.status_code == 201, r.text
    before = _counters(http)
    assert predict(http, "metered", clips["ok"]).status_code == 200  # cold: one load
    cold = _counters(http)
    assert cold["vpetl_adapter_cache_loads_total"] == before["vpetl_adapter_cache_loads_total"] + 1
    assert cold["vpetl_adapter_cache_misses_total"] > before["vpetl_adapter_cache_misses_total"]
    assert cold["vpetl_adapter_cache_entries"] >= 1 and cold["vpetl_adapter_cache_bytes"] > 0
    assert predict(http, "metered", clips["ok"]).status_code == 200  # warm: hits, no load
    warm = _counters(http)
    assert warm["vpetl_adapter_cache_loads_total"] == cold["vpetl_adapter_cache_loads_total"]
    assert warm["vpetl_adapter_cache_misses_total"] == cold["vpetl_adapter_cache_misses_total"]
    assert warm["vpetl_adapter_cache_hits_total"] > cold["vpetl_adapter_cache_hits_total"]
