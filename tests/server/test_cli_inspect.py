"""``vpetl inspect`` as a user runs it: the installed console script in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def vpetl_exe() -> str:
    for candidate in (Path(sys.executable).parent / "vpetl", REPO / ".venv" / "bin" / "vpetl"):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("vpetl")
    if found is None:
        pytest.fail("the `vpetl` console script is not installed (pip install -e .)")
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "160", "NO_COLOR": "1", "TERM": "dumb"}
    return subprocess.run([vpetl_exe(), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


def test_inspect_swin3d_b_json() -> None:
    out = run("inspect", "--backbone", "swin3d-b", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["backbone"] == "swin3d-b" and report["family"] == "swin3d"
    assert report["parameters"] == 87_638_984
    assert sum(report["breakdown"].values()) == 87_638_984
    assert report["num_features"] == 1024
    assert report["input_spec"]["num_frames"] == 8 and report["input_spec"]["size"] == 224
    tokens = report["tokens"]
    assert tokens["grid"] == [4, 56, 56] and tokens["tokens"] == 4 * 56 * 56
    assert [s["grid"] for s in tokens["stages"]] == [[4, 56, 56], [4, 28, 28], [4, 14, 14], [4, 7, 7]]
    assert tokens["stages"][0]["window"] == [4, 7, 7]  # 8 frames -> 4 temporal tokens: window clamped
    assert len(report["sha256"]) == 64


def test_inspect_videomae_tiny_human() -> None:
    out = run("inspect", "--backbone", "videomae-tiny", "--frames", "8")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "videomae-tiny" in text and "video_vit" in text and "parameters" in text
    assert "blocks.0" in text and "encoder (patch_embed + blocks)" in text
    assert "tokens for 8×32²: grid [4, 2, 2], 16 tokens" in text
    assert "Traceback" not in out.stderr


def test_inspect_unknown_backbone_exits_2() -> None:
    out = run("inspect", "--backbone", "videomae-xl")
    assert out.returncode == 2
    assert "unknown_backbone" in out.stderr and "videomae-xl" in out.stderr
    assert "Traceback" not in out.stderr
    assert out.stdout == ""


def test_inspect_bad_checkpoint_exits_2(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    out = run("inspect", "--backbone", "videomae-tiny", "--checkpoint", str(empty), "--json")
    assert out.returncode == 2
    assert "checkpoint_error" in out.stderr and "Traceback" not in out.stderr
