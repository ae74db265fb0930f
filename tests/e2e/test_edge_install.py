"""An edge-only install (``pip install .[edge]`` into a fresh venv) has no torch, and its ``vpetl-edge`` runs:
``--help`` and a real local prediction (onnxruntime) against a server on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "edge_client"))


@pytest.fixture(scope="module")
def edge_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("edge-venv")
    venv.create(root, with_pip=True)
    pip = [str(root / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    # the lock as constraints: the edge gets the very versions `make install` does
    proc = subprocess.run([*pip, "-c", str(REPO / "constraints.txt"), f"{REPO}[edge]"], capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def test_edge_install_has_no_torch_and_predicts_locally(edge_venv: Path, tmp_path: Path) -> None:
    python, cli = edge_venv / "bin" / "python", edge_venv / "bin" / "vpetl-edge"
    no_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    assert subprocess.run([str(cli), "--help"], capture_output=True, timeout=60).returncode == 0

    # A real server-side artifact and graph made here (this process has torch), served by the fake server.
    from edge_helpers import make_adapter
    from fake_server import FakeServer

    from vpetl.backbones import create_backbone
    from vpetl.data.synth import write_mp4
    from vpetl.formats.onnx import export_backbone_onnx

    model, data = make_adapter("bapat", {"bottleneck": 8}, task="demo")
    graph = tmp_path / "g.onnx"
    export_backbone_onnx(create_backbone("videomae-tiny"), "bapat", graph)
    import numpy as np

    clip = tmp_path / "clip.mp4"
    write_mp4(clip, (np.random.default_rng(0).random((16, 64, 64, 3)) * 255).astype("uint8"))  # (T, H, W, 3)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VPETL_", "PYTHONPATH"))}
    env["VPETL_EDGE_CACHE"] = str(tmp_path / "cache")
    with FakeServer() as fake:
        fake.state.publish("demo", data)
        fake.state.onnx["bapat"] = graph.read_bytes()
        proc = subprocess.run(
            [str(cli), "predict", str(clip), "--task", "demo", "--local", "--json", "--server", fake.url],
            capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
        )
        folder = tmp_path / "camera"
        folder.mkdir()
        (folder / "seg.mp4").write_bytes(clip.read_bytes())
        watched = subprocess.run(
            [str(cli), "watch", str(folder), "--task", "demo", "--local", "--once", "--interval", "0.1",
             "--server", fake.url], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = json.loads(proc.stdout)
    assert result["local"] is True and result["task"] == "demo" and len(result["predictions"]) >= 1
    assert watched.returncode == 0, watched.stderr[-3000:]
    (line,) = [json.loads(x) for x in watched.stdout.splitlines()]
    assert line["source"] == "local" and line["predictions"] == result["predictions"]


def test_the_installed_package_ships_the_console(edge_venv: Path) -> None:
    """A non-editable install carries the web console's static files (package data), so /ui works from a wheel."""
    python = edge_venv / "bin" / "python"
    code = ("import importlib.resources as r; d = r.files('server') / 'static'; "
            "print(sorted(p.name for p in d.iterdir()))")  # fmt: skip
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr
    shipped = set(json.loads(proc.stdout.replace("'", '"')))
    assert shipped == {p.name for p in (REPO / "server" / "static").iterdir()}
