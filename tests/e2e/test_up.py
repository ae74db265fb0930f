"""``vpetl up``, the headline command, as a user runs it (on a tiny demo: 4 clips per class, 1 epoch): a fresh
data dir → ready → the two demo tasks listed and the printed sample clip predicted → stopped → started again from
its cache (nothing retrained, same answers).

The one shortcut: the demo backbone's 3-minute pretraining is stood in for by a seeded backbone file written where
``vpetl pretrain``'s cache puts it (same key, same sidecar format); pretraining itself is covered by
tests/training/test_pretrain.py. Everything else — embedded redis-server, synthetic demo datasets, BAPAT training
of both demo tasks, publishing, the local engine and worker thread, uvicorn — is the real first run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from training.pretrain import BACKBONE, PretrainConfig, pretrain_key
from vpetl.backbones import create_backbone
from vpetl.backbones.checkpoint import save_backbone

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _seed_backbone_cache(data_dir: Path) -> str:
    """A demo backbone file + sidecar exactly where `vpetl up` looks for its pretrained backbone."""
    cache = data_dir / "backbones"
    cache.mkdir(parents=True)
    config = PretrainConfig()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the key covers the thread count: vpetl up pretrains with 2 (VPETL_TORCH_THREADS unset)
    try:
        key = pretrain_key(config)
    finally:
        torch.set_num_threads(threads)
    path = cache / f"{BACKBONE}-{key[:16]}.safetensors"
    backbone = create_backbone(BACKBONE, seed=11)
    save_backbone(backbone, path)
    sidecar = {"backbone_sha256": backbone.sha256(), "val_top1": 0.0, "val_top5": 0.0, "data_time_s": 0.0,
               "train_time_s": 0.0, "total_time_s": 0.0, "key": key, "config": config.to_dict()}  # fmt: skip
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    return backbone.sha256()


def _start(data_dir: Path, port: int, log: Path, json_out: Path | None = None) -> subprocess.Popen[bytes]:
    """``vpetl up`` logging to ``log``; with ``json_out``, ``--json`` and its stdout (JSON lines only) there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VPETL_")}
    with log.open("ab") as fh:
        # a tiny demo (the defaults train 64 clips per class for 10 epochs: minutes on 2 cores)
        cmd = [str(BIN / "vpetl"), "up", "--data-dir", str(data_dir), "--port", str(port),
               "--demo-clips-per-class", "4", "--demo-epochs", "1"] + (["--json"] if json_out else [])  # fmt: skip
        out = json_out.open("wb") if json_out else fh
        try:
            return subprocess.Popen(cmd, stdout=out, stderr=fh if json_out else subprocess.STDOUT, env=env,
                                    start_new_session=True)  # fmt: skip
        finally:
            if json_out:
                out.close()


def _json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _wait_json_ready(proc: subprocess.Popen[bytes], path: Path, log: Path, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        lines = _json_lines(path) if path.exists() else []
        if lines:
            return lines[0]
        time.sleep(0.2)
    pytest.fail("vpetl up --json printed no ready line:\n" + log.read_text()[-3000:])


def _wait_ready(proc: subprocess.Popen[bytes], base: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail("vpetl up not ready:\n" + log.read_text()[-3000:])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_vpetl_up_first_run_then_restart_from_cache(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "vpetl", _free_port()
    base = f"http://127.0.0.1:{port}"
    sha = _seed_backbone_cache(data_dir)
    log = tmp_path / "up.log"

    proc = _start(data_dir, port, log)
    try:
        _wait_ready(proc, base, log, timeout=600)
        assert (data_dir / "redis").is_dir()  # the embedded redis-server keeps its data under the data dir
        assert httpx.get(base + "/backbone").json()["sha256"] == sha
        tasks = {t["task"]: t for t in httpx.get(base + "/adapters").json()["adapters"]}
        assert set(tasks) == {"synthetic-order", "synthetic-appearance"}
        first_out = log.read_text()
        sample = re.search(r"sample clip: (\S+)", first_out)
        assert sample, first_out[-2000:]  # the README's copy-paste example names a real file
        clip = Path(sample.group(1)).read_bytes()
        first = httpx.post(base + "/predict", params={"task": "synthetic-appearance"},
                           files={"clip": ("c.mp4", clip, "video/mp4")}, timeout=30)  # fmt: skip
        assert first.status_code == 200 and first.json()["version"] == 1, first.text
    finally:
        _stop(proc)

    mark = len(log.read_text())
    json_out = tmp_path / "up.jsonl"
    proc = _start(data_dir, port, log, json_out)  # the restart with --json: stdout is JSON lines only
    try:
        ready = _wait_json_ready(proc, json_out, log, timeout=120)
        # the line comes once the server answers: ready right away, no polling needed
        assert httpx.get(base + "/readyz", timeout=5).status_code == 200
        assert ready["event"] == "ready" and ready["url"] == base and ready["ui"] == base + "/ui/"
        assert ready["backbone_sha256"] == sha and ready["tasks"] == sorted(tasks)
        assert Path(ready["sample_clip"]).is_file()
        second_out = log.read_text()[mark:]
        # from the cache: both adapters found in Redis's AOF, nothing generated or trained again
        assert second_out.count("cached") >= 2 and "training BAPAT" not in second_out, second_out
        again = httpx.post(base + "/predict", params={"task": "synthetic-appearance"},
                           files={"clip": ("c.mp4", clip, "video/mp4")}, timeout=30)  # fmt: skip
        assert again.status_code == 200
        assert again.json()["predictions"] == first.json()["predictions"]
        assert again.json()["adapter_sha256"] == first.json()["adapter_sha256"]
    finally:
        _stop(proc)
    assert [line["event"] for line in _json_lines(json_out)] == ["ready", "stopped"]
