"""The device data path reaches the bank from Settings (env, CLI), and a server padding to batch buckets answers
/predict exactly as the adapter's own model does on the decoded clip (the reference, not the bank)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import ValidationError

from server.app import build_app
from server.services import create_services
from server.settings import Settings
from tests.server.conftest import BACKBONE, LABELS, db_url, flush, make_adapter, vpetl_executable
from vpetl.petl.data_path import DataPath


def test_settings_build_the_data_path(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().data_path() == DataPath()  # pinned + stream + TF32 on CUDA, no buckets, no compile
    monkeypatch.setenv("VPETL_BATCH_BUCKETS", "32, 1,8")
    monkeypatch.setenv("VPETL_TF32", "false")
    settings = Settings()
    assert settings.batch_buckets == "1,8,32"
    assert settings.data_path() == DataPath(tf32=False, buckets=(1, 8, 32))
    with pytest.raises(ValidationError, match="comma-separated sizes"):
        Settings(batch_buckets="1,0")


def test_bad_buckets_are_refused_at_start_up(tmp_path: Path) -> None:
    r = subprocess.run([vpetl_executable(), "serve", "--batch-buckets", "8,big", "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode != 0 and "batch_buckets" in (r.stdout + r.stderr)


@pytest.mark.integration
def test_a_bucketed_server_predicts_like_the_adapter_model(
    redis_server_url: str, tmp_path: Path, clips: dict[str, bytes]
) -> None:
    from server.decoding import decode_clip
    from vpetl.petl.io import load_adapter

    url = db_url(redis_server_url, 7)
    flush(url)
    built = create_services(Settings(redis_url=url, backbone=BACKBONE, data_dir=tmp_path, batch_buckets="4"))
    try:
        assert built.bank is not None and built.bank.data_path.buckets == (4,)
        data = make_adapter("buckets", seed=3)
        with TestClient(build_app(built), base_url="http://127.0.0.1") as client:
            r = client.put("/adapters/buckets", content=data, headers={"Content-Type": "application/octet-stream"})
            assert r.status_code == 201, r.text
            r = client.post("/predict?task=buckets&topk=3", content=clips["ok"], headers={"Content-Type": "video/mp4"})
            assert r.status_code == 200, r.text
        model = load_adapter(data, BACKBONE)  # the seeded backbone, checked against the file's sha256
        spec = built.bank.backbone.input_spec
        clip = torch.from_numpy(decode_clip(clips["ok"], spec))[None]  # (1, C, T, H, W)
        with torch.no_grad():
            probs = torch.softmax(model(clip)[0], dim=-1)
        top = probs.topk(3)
        assert [p["label"] for p in r.json()["predictions"]] == [LABELS[i] for i in top.indices.tolist()]
        assert r.json()["predictions"][0]["score"] == pytest.approx(top.values[0].item(), abs=1e-4)
    finally:
        built.close()
        flush(url)
