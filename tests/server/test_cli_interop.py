"""``vpetl export hf|peft`` and ``vpetl import peft`` as users run them (subprocesses), and the whole path a PEFT user
takes: a LoRA trained with the real ``peft`` on HF VideoMAE → ``vpetl import peft`` → ``PUT /adapters/{task}`` on a
real ``vpetl serve`` (uvicorn + redis-server) → ``/predict`` scores equal to PEFT's own on the same clip."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tests.server.conftest import BACKBONE, ServerProcess, db_url, error_code, flush, make_adapter, vpetl_executable

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
pytestmark = pytest.mark.integration
torch.set_num_threads(2)

TOKEN = "interop-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LABELS = ["walk", "run", "jump", "sit"]


def vpetl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([vpetl_executable(), *args], capture_output=True, text=True, timeout=300)


def said(r: subprocess.CompletedProcess[str]) -> str:
    """stderr with rich's line wrapping undone."""
    return " ".join(r.stderr.split())


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("interop") / "hf"
    r = vpetl("export", "hf", "--backbone", BACKBONE, "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["format"] == "hf" and info["backbone"] == BACKBONE and (out / "config.json").is_file()
    return out


@pytest.fixture(scope="module")
def peft_trained(hf_dir: Path) -> tuple[Path, object]:
    """A LoRA on query/value + MLP trained for a few steps with peft on the exported HF VideoMAE."""
    torch.manual_seed(0)
    base = transformers.VideoMAEForVideoClassification.from_pretrained(hf_dir, num_labels=len(LABELS))
    cfg = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["query", "value", "intermediate.dense"],
        modules_to_save=["classifier"],
        lora_dropout=0.1,
    )
    model = peft.get_peft_model(base, cfg)
    spec = transformers.VideoMAEConfig.from_pretrained(hf_dir)
    x = torch.randn(
        4, spec.num_frames, 3, spec.image_size, spec.image_size, generator=torch.Generator().manual_seed(1)
    )
    y = torch.arange(4)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    model.train()
    for _ in range(4):
        loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = hf_dir.parent / "peft"
    model.save_pretrained(out)
    return out, model.eval()


@pytest.fixture(scope="module")
def server(redis_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    url = db_url(redis_server_url, 8)
    flush(url)
    tmp = tmp_path_factory.mktemp("interop_server")
    args = ["--redis-url", url, "--backbone", BACKBONE, "--data-dir", str(tmp / "data")]
    proc = ServerProcess(args, tmp / "server.log", env={"VPETL_ADMIN_TOKEN": TOKEN}).start()
    try:
        yield proc
    finally:
        proc.stop()
        flush(url)


def test_peft_lora_imports_and_serves_with_peft_logits(peft_trained, server: ServerProcess, clips, tmp_path: Path):
    from vpetl.backbones import create_backbone
    from vpetl.video import load_clip

    peft_dir, peft_model = peft_trained
    out = tmp_path / "imported.safetensors"
    r = vpetl(
        "import",
        "peft",
        str(peft_dir),
        "--task",
        "peftcats",
        "--backbone",
        BACKBONE,
        "--out",
        str(out),
        "--labels",
        ",".join(LABELS),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["method_config"]["targets"] == ["q", "v", "fc1"] and info["method_config"]["dropout"] == 0.1
    with httpx.Client(base_url=server.url, timeout=60.0, headers=AUTH) as http:
        put = http.put(
            "/adapters/peftcats",
            content=out.read_bytes(),
            headers={**AUTH, "Content-Type": "application/octet-stream"},
        )
        assert put.status_code == 201, put.text
        assert put.json()["sha256"] == info["sha256"]
        pred = http.post(
            "/predict",
            params={"task": "peftcats", "topk": len(LABELS)},
            content=clips["ok"],
            headers={"Content-Type": "video/mp4"},
        )
    assert pred.status_code == 200, pred.text
    served = {p["index"]: p["score"] for p in pred.json()["predictions"]}
    # PEFT on the very clip the server decoded: vpetl.video.load_clip is the server's decoder
    clip = torch.from_numpy(np.ascontiguousarray(load_clip(clips["ok"], create_backbone(BACKBONE).input_spec)))
    with torch.no_grad():
        logits = peft_model(pixel_values=clip.unsqueeze(0).permute(0, 2, 1, 3, 4)).logits[0]  # HF: (B, T, C, H, W)
    theirs = torch.softmax(logits, dim=-1)
    assert len(served) == len(LABELS)
    diff = max(abs(served[i] - float(theirs[i])) for i in range(len(LABELS)))
    assert diff <= 1e-4, (served, theirs)
    assert max(served.values()) < 0.999  # a real distribution, so equal scores mean equal logits up to a shift


def test_vpetl_lora_exports_to_peft_and_bapat_is_refused(tmp_path: Path) -> None:
    lora = tmp_path / "lora.safetensors"
    lora.write_bytes(
        make_adapter(
            "cats",
            seed=1,
            method={
                "method": "lora",
                "train_head": True,
                "rank": 2,
                "alpha": None,
                "targets": ["q", "fc2"],
                "dropout": 0.0,
            },
        )
    )
    r = vpetl("export", "peft", str(lora), "--out", str(tmp_path / "peft"), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["format"] == "peft" and info["targets"] == ["q", "fc2"] and info["modules"] == 4
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and "encoder.layer.1.output.dense" in cfg["target_modules"]

    bapat = tmp_path / "bapat.safetensors"
    bapat.write_bytes(make_adapter("cats", seed=1, method="bapat"))
    r = vpetl("export", "peft", str(bapat), "--out", str(tmp_path / "refused"))
    assert r.returncode == 2 and "unsupported_conversion" in said(r) and "vpetl's own format" in said(r)
    assert not (tmp_path / "refused").exists()


def test_export_hf_refuses_a_swin_backbone(tmp_path: Path) -> None:
    r = vpetl("export", "hf", "--backbone", "swin3d-tiny", "--out", str(tmp_path / "x"), "--json")
    assert r.returncode == 2 and "unsupported_conversion" in said(r)
    assert not (tmp_path / "x").exists()


def test_import_peft_refuses_a_dora_adapter(peft_trained, tmp_path: Path) -> None:
    peft_dir, _ = peft_trained
    dora = tmp_path / "dora"
    dora.mkdir()
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (dora / name).write_bytes((peft_dir / name).read_bytes())
    cfg = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    r = vpetl("import", "peft", str(dora), "--task", "t", "--backbone", BACKBONE, "--out", str(tmp_path / "o.st"))
    assert r.returncode == 2 and "DoRA" in said(r) and not (tmp_path / "o.st").exists()


def test_put_of_a_non_vpetl_file_is_refused(peft_trained, server: ServerProcess) -> None:
    """Uploading PEFT's own file instead of the converted one: a 4xx with a stable code, the store unchanged."""
    peft_dir, _ = peft_trained
    with httpx.Client(base_url=server.url, timeout=60.0, headers=AUTH) as http:
        before = http.get("/adapters").json()
        r = http.put(
            "/adapters/raw",
            content=(peft_dir / "adapter_model.safetensors").read_bytes(),
            headers={**AUTH, "Content-Type": "application/octet-stream"},
        )
        assert 400 <= r.status_code < 500 and error_code(r) == "invalid_adapter", r.text
        assert http.get("/adapters").json() == before


def test_export_hf_with_an_adapter_writes_the_merged_task(tmp_path: Path) -> None:
    lora = tmp_path / "lora.safetensors"
    lora.write_bytes(make_adapter("cats", seed=2, method="lora", labels=LABELS))
    r = vpetl("export", "hf", "--backbone", BACKBONE, "--adapter", str(lora), "--out", str(tmp_path / "t"), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["method"] == "lora" and info["classifier"] is True and info["task"] == "cats"
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    assert cfg["id2label"] == {str(i): name for i, name in enumerate(LABELS)}
