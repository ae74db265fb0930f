"""``vpetl train`` as a user runs it: a subprocess on a tiny dataset, JSON out, an adapter file that loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

VPETL = Path(sys.executable).with_name("vpetl")
ENV = {**os.environ, "VPETL_TORCH_THREADS": "1"}


def test_vpetl_train_writes_an_adapter(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "adapter.safetensors"
    cmd = [str(VPETL), "train", "--data", str(tiny_data), "--task", "tiny-task", "--method", "patt",
           "--bottleneck", "8", "--positions", "q,v", "--scale", "0.5", "--epochs", "1", "--batch-size", "4",
           "--seed", "1", "--backbone", "videomae-tiny", "--out", str(out), "--json", "--data-dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["task"] == "tiny-task" and result["method"]["bottleneck"] == 8
    assert result["method"]["positions"] == ["q", "v"] and result["method"]["scale"] == 0.5
    assert out.is_file() and len(result["sha256"]) == 64 and 0.0 <= result["metrics"]["top1"] <= 1.0

    from vpetl.artifact import adapter_sha256, read_adapter

    assert adapter_sha256(out.read_bytes()) == result["sha256"]
    meta = read_adapter(out).meta
    assert meta.task == "tiny-task" and meta.method == "patt" and len(meta.labels) == 8


def test_vpetl_train_reports_bad_options_without_a_traceback(tiny_data: Path, tmp_path: Path) -> None:
    cmd = [str(VPETL), "train", "--data", str(tiny_data), "--task", "t", "--method", "bitfit", "--bottleneck", "8",
           "--backbone", "videomae-tiny", "--out", str(tmp_path / "x.safetensors")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "invalid_request" in proc.stderr and "bottleneck" in proc.stderr
