"""``GET /backbone/onnx`` (server/routes/onnx.py) and ``vpetl export-onnx``: the graph is exported once, served
with ETag = sha256, 304 on If-None-Match, and runs in onnxruntime; the serving backbone's own hooks are left alone.
Variants: ``?quant=int8``, ``?task=`` (merged single-task graph) and ``/backbone/onnx/agreement``, on a real app
(real Redis store, the task's validation clips uploaded through the API)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from server.app import build_app
from server.routes import onnx as onnx_route
from server.services import Services, create_services
from server.settings import Settings
from tests.server.conftest import BACKBONE, db_url, error_code, flush

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def services(redis_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    url = db_url(redis_server_url, 2)
    flush(url)
    settings = Settings(redis_url=url, backbone=BACKBONE, data_dir=tmp_path_factory.mktemp("data"), admin_token="tok")
    built = create_services(settings)  # the serving backbone carries the bank's hooks, as in the real server
    try:
        yield built
    finally:
        built.close()
        flush(url)


@pytest.fixture(scope="module")
def client(services: Services) -> Iterator[TestClient]:
    app: FastAPI = build_app(services)
    with TestClient(app) as client:
        client.headers["Authorization"] = "Bearer tok"
        yield client


def test_graph_is_exported_once_and_served_with_etag(client: TestClient) -> None:
    first = client.get("/backbone/onnx")
    assert first.status_code == 200 and first.headers["content-type"] == "application/octet-stream"
    sha = hashlib.sha256(first.content).hexdigest()
    assert first.headers["etag"] == f'"{sha}"'
    services = client.app.state.services  # type: ignore[attr-defined]
    path = onnx_route.graph_path(services, "bapat")
    mtime = path.stat().st_mtime_ns
    again = client.get("/backbone/onnx", headers={"If-None-Match": f'"{sha}"'})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == f'"{sha}"'
    assert client.get("/backbone/onnx?family=bapat").content == first.content
    assert path.stat().st_mtime_ns == mtime  # not exported again
    assert all(list(block.adapters) == ["bank"] for block in services.backbone.adaptable_blocks())

    import onnxruntime as ort

    session = ort.InferenceSession(first.content, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["backbone_sha256"] == services.bank.backbone_sha256 and meta["family"] == "bapat"


def test_unknown_family_is_a_422(client: TestClient) -> None:
    response = client.get("/backbone/onnx?family=prefix")
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"


def test_export_onnx_command(tmp_path: Path) -> None:
    from server.cli import app

    out = tmp_path / "lin.onnx"
    result = CliRunner().invoke(
        app, ["export-onnx", "--backbone", "videomae-tiny", "--family", "linear", "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["family"] == "linear" and info["size"] == out.stat().st_size and info["max_abs_diff"] < 1e-4
    assert json.loads(info["input_names"]) == ["clip", "head.weight", "head.bias"]

    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    feeds = {
        "clip": np.zeros((3, 3, 4, 32, 32), np.float32),
        "head.weight": np.ones((7, 64), np.float32),
        "head.bias": np.zeros(7, np.float32),
    }
    assert session.run(None, feeds)[0].shape == (3, 7)
    bad = CliRunner().invoke(app, ["export-onnx", "--backbone", "nope", "--out", str(out)])
    assert bad.exit_code != 0 and "unknown_backbone" in bad.output


MP4 = {"Content-Type": "video/mp4"}
OCTET = {"Content-Type": "application/octet-stream"}


def _runner(data: bytes):  # noqa: ANN202 - edge_client.runner.Runner
    from edge_client.runner import Runner

    return Runner(data, threads=2)


def test_int8_variant_is_built_once_and_served_with_its_own_etag(client: TestClient, services: Services) -> None:
    fp32 = client.get("/backbone/onnx?family=bapat").content
    first = client.get("/backbone/onnx?family=bapat&quant=int8")
    assert first.status_code == 200
    sha = hashlib.sha256(first.content).hexdigest()
    assert first.headers["etag"] == f'"{sha}"' and sha != hashlib.sha256(fp32).hexdigest()
    assert len(first.content) < 0.75 * len(fp32)  # ViT-B: 0.25 (BENCHMARKS.md)
    path = onnx_route.graph_path(services, "bapat", "int8")
    mtime = path.stat().st_mtime_ns
    again = client.get("/backbone/onnx?family=bapat&quant=int8", headers={"If-None-Match": f'"{sha}"'})
    assert again.status_code == 304
    assert path.stat().st_mtime_ns == mtime
    runner = _runner(first.content)
    assert runner.info.quant == "int8" and runner.info.input_names == _runner(fp32).info.input_names
    response = client.get("/backbone/onnx?quant=int4")
    assert response.status_code == 422 and error_code(response) == "invalid_request"


def test_merged_variant_holds_the_current_adapter(client: TestClient) -> None:
    from tests.server.conftest import make_adapter
    from vpetl.petl.registry import make_config

    lora = make_config("lora", rank=2, alpha=4.0)
    for seed in (1, 2):  # two versions: the second is current
        r = client.put("/adapters/solo", content=make_adapter("solo", seed=seed, method=lora), headers=OCTET)
        assert r.status_code == 201, r.text
    v1 = client.get("/adapters/solo/download?version=1").content
    v2 = client.get("/adapters/solo/download").content
    merged = client.get("/backbone/onnx?task=solo")
    assert merged.status_code == 200
    runner = _runner(merged.content)
    assert [i.name for i in runner.session.get_inputs()] == ["clip"]
    assert runner.info.merged_task == "solo" and runner.info.merged_adapter_sha256 == hashlib.sha256(v2).hexdigest()
    shared = _runner(client.get("/backbone/onnx?family=lora").content)
    spec = runner.input_spec
    x = np.random.default_rng(0).standard_normal((2, 3, spec.num_frames, spec.size, spec.size), np.float32)
    np.testing.assert_allclose(runner.logits(x, v2), shared.logits(x, v2), atol=1e-4)
    old = client.get("/backbone/onnx?task=solo&version=1")
    assert old.headers["etag"] != merged.headers["etag"]
    np.testing.assert_allclose(_runner(old.content).logits(x, v1), shared.logits(x, v1), atol=1e-4)
    for query, status, code in [
        ("task=nope", 404, "unknown_task"),
        ("version=1", 422, "invalid_request"),
    ]:
        response = client.get(f"/backbone/onnx?{query}")
        assert response.status_code == status and error_code(response) == code, response.text
    prefix = make_config("prefix", num_tokens=2, bottleneck=4)
    assert client.put("/adapters/pre", content=make_adapter("pre", method=prefix), headers=OCTET).status_code == 201
    response = client.get("/backbone/onnx?task=pre")
    assert response.status_code == 409 and error_code(response) == "incompatible_adapter"


def test_agreement_on_the_tasks_validation_clips(client: TestClient, clips: dict[str, bytes]) -> None:
    from tests.server.conftest import make_adapter

    data = make_adapter("agree", seed=3)  # bapat
    assert client.put("/adapters/agree", content=data, headers=OCTET).status_code == 201
    response = client.get("/backbone/onnx/agreement?task=agree&quant=int8")
    assert response.status_code == 200 and response.json()["clips"] == 0 and response.json()["agreement"] is None
    # clips uploaded later are a new measurement (not the cached "no clips" answer)
    bodies = [clips[k] for k in ("ok", "ok2", "ok3", "ok4")]
    for body in bodies:
        r = client.post("/datasets/agree/clips?label=walk&split=val", content=body, headers=MP4)
        assert r.status_code == 201, r.text
    got = client.get("/backbone/onnx/agreement?task=agree&quant=int8").json()
    # the same count, independently: the edge runner (numpy folding, its own decode) over both downloaded graphs
    fp32 = _runner(client.get("/backbone/onnx?family=bapat").content)
    int8 = _runner(client.get("/backbone/onnx?family=bapat&quant=int8").content)
    agree = sum(int(fp32.predict(b, data).predictions[0].index == int8.predict(b, data).predictions[0].index)
                for b in bodies)  # fmt: skip
    assert (got["clips"], got["agree"], got["quant"], got["merged"]) == (4, agree, "int8", False)
    assert got["agreement"] == agree / 4 and 0 < got["max_abs_logit_diff"] < 1.0
    merged = client.get("/backbone/onnx/agreement?task=agree&quant=fp32&merged=true").json()
    assert merged["agree"] == 4 and merged["max_abs_logit_diff"] < 1e-4  # folding changes no prediction
    response = client.get("/backbone/onnx/agreement?task=agree&quant=fp32")
    assert response.status_code == 422 and error_code(response) == "invalid_request"


def test_export_onnx_quantize_and_merge(tmp_path: Path) -> None:
    from server.cli import app
    from tests.server.conftest import make_adapter

    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    base = ["export-onnx", "--backbone", BACKBONE, "--json"]
    assert CliRunner().invoke(app, [*base, "--out", str(fp32)]).exit_code == 0
    result = CliRunner().invoke(app, [*base, "--out", str(int8), "--quantize", "int8"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["quant"] == "int8" and info["size"] == int8.stat().st_size and info["fp32_size"] > info["size"]
    assert not [p.name for p in tmp_path.iterdir() if p.name not in ("fp32.onnx", "int8.onnx")]  # no temp left
    adapter = tmp_path / "a.safetensors"
    adapter.write_bytes(make_adapter("solo", seed=5))
    merged = tmp_path / "merged.onnx"
    result = CliRunner().invoke(app, [*base, "--out", str(merged), "--adapter", str(adapter), "--quantize", "int8"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["merged_task"] == "solo" and info["quant"] == "int8" and json.loads(info["input_names"]) == ["clip"]
    bad = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "x.onnx"), "--quantize", "int4"])
    assert bad.exit_code != 0 and "invalid_request" in bad.output and not (tmp_path / "x.onnx").exists()
