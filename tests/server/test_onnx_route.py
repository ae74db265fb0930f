"""``GET /backbone/onnx`` (server/routes/onnx.py) and ``vpetl export-onnx``: the graph is exported once, served
with ETag = sha256, 304 on If-None-Match, and runs in onnxruntime; the serving backbone's own hooks are left alone."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from server.errors import install_error_handlers
from server.routes import onnx as onnx_route
from vpetl.backbones import create_backbone
from vpetl.backbones.identity import backbone_info
from vpetl.petl.bank import AdapterBank

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    backbone = create_backbone("videomae-tiny")
    bank = AdapterBank(backbone)  # the serving backbone carries the bank's hooks, as in the real server
    services = SimpleNamespace(
        backbone=backbone, bank=bank, identity=backbone_info(backbone), require_backbone=lambda: backbone,
        settings=SimpleNamespace(data_dir=tmp_path_factory.mktemp("data")),
    )
    app = FastAPI()
    app.state.services = services
    install_error_handlers(app)
    app.include_router(onnx_route.router)
    return TestClient(app)


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
    result = CliRunner().invoke(app, ["export-onnx", "--backbone", "videomae-tiny", "--family", "linear",
                                      "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["family"] == "linear" and info["size"] == out.stat().st_size and info["max_abs_diff"] < 1e-4
    assert json.loads(info["input_names"]) == ["clip", "head.weight", "head.bias"]

    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    feeds = {"clip": np.zeros((3, 3, 4, 32, 32), np.float32), "head.weight": np.ones((7, 64), np.float32),
             "head.bias": np.zeros(7, np.float32)}
    assert session.run(None, feeds)[0].shape == (3, 7)
    bad = CliRunner().invoke(app, ["export-onnx", "--backbone", "nope", "--out", str(out)])
    assert bad.exit_code != 0 and "unknown_backbone" in bad.output
