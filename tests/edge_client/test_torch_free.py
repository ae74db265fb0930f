"""The edge never imports torch: ``import edge_client``, every ``vpetl-edge`` command's ``--help``, and a real local
prediction (onnxruntime on an mp4, adapter and graph pulled from a server) leave 'torch' out of ``sys.modules``.

Runs in a fresh interpreter (this test process has torch loaded), which also proves the CLI works without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from edge_helpers import HERE, make_adapter

from vpetl.video import load_clip

SCRIPT = textwrap.dedent(
    """
    import contextlib, io, json, sys
    sys.path.insert(0, {here!r})

    def torch_loaded():
        return sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))

    report = {{}}
    import edge_client
    report["after_import"] = torch_loaded()

    import typer
    from edge_client.cli import app, main

    def walk(command, path):
        yield path
        for name, sub in getattr(command, "commands", {{}}).items():  # typer vendors click: duck-type groups
            yield from walk(sub, path + [name])

    report["commands"] = [" ".join(p) for p in walk(typer.main.get_command(app), [])]
    report["help_failures"] = []
    for path in walk(typer.main.get_command(app), []):
        sys.argv = ["vpetl-edge", *path, "--help"]
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            try:
                main()
            except SystemExit as e:
                if e.code not in (0, None):
                    report["help_failures"].append(" ".join(path))
    report["after_help"] = torch_loaded()

    from fake_server import FakeServer  # stdlib + vpetl.artifact: torch-free too
    with FakeServer() as fake:
        fake.state.publish("demo", open({adapter!r}, "rb").read())
        fake.state.onnx["bapat"] = open({graph!r}, "rb").read()
        sys.argv = ["vpetl-edge", "predict", {clip!r}, "--task", "demo", "--local", "--json", "--topk", "2",
                    "--server", fake.url, "--cache", {cache!r}]
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            try:
                main()
                report["exit"] = 0
            except SystemExit as e:
                report["exit"] = e.code
        report["predict"] = json.loads(buf.getvalue()) if buf.getvalue() else None
    report["after_predict"] = torch_loaded()
    report["onnxruntime"] = "onnxruntime" in sys.modules
    print("REPORT" + json.dumps(report))
    """
)


def test_edge_client_never_imports_torch(tmp_path: Path, tiny_graphs: dict[str, Path], mp4_clip: Path) -> None:
    model, data = make_adapter("bapat", {"bottleneck": 8}, task="demo")
    adapter = tmp_path / "demo.safetensors"
    adapter.write_bytes(data)
    script = SCRIPT.format(here=str(HERE), adapter=str(adapter), graph=str(tiny_graphs["bapat"]),
                           clip=str(mp4_clip), cache=str(tmp_path / "cache"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VPETL_")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.split("REPORT", 1)[1])

    assert report["after_import"] == [], report["after_import"]
    expected = {"", "predict", "adapters", "adapters ls", "adapters pull", "adapters push", "adapters rm", "upload",
                "train", "jobs", "sync"}
    assert expected <= set(report["commands"]), report["commands"]
    assert report["help_failures"] == []
    assert report["after_help"] == []

    assert report["exit"] == 0 and report["onnxruntime"]
    assert report["after_predict"] == [], "a local prediction pulled torch in"
    (result,) = report["predict"]
    spec = model.backbone.input_spec  # type: ignore[attr-defined]
    with torch.no_grad():
        reference = model(torch.from_numpy(load_clip(mp4_clip, spec)[None]))[0].numpy()  # type: ignore[operator]
    assert result["local"] is True and result["task"] == "demo" and result["version"] == 1
    assert result["predictions"][0]["index"] == int(np.argmax(reference))
