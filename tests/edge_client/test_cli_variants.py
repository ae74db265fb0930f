"""``vpetl-edge sync --quant int8 / --merged TASK`` against a real ``vpetl serve``: the variant graphs are
downloaded once (ETag), optimised for this device once, picked by ``predict --local``, and the server's agreement
with fp32 on the task's validation clips is printed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from edge_helpers import make_adapter
from typer.testing import CliRunner

from edge_client.cache import EdgeCache
from edge_client.cli import app
from edge_client.runner import Runner
from tests.server.conftest import ServerProcess, db_url, flush

OCTET = {"Content-Type": "application/octet-stream"}
MP4 = {"Content-Type": "video/mp4"}


@pytest.fixture(scope="module")
def server(redis_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("variants_server")
    url = db_url(redis_server_url, 1)
    flush(url)
    args = ["--redis-url", url, "--backbone", "videomae-tiny", "--data-dir", str(tmp / "data")]
    proc = ServerProcess(args, tmp / "server.log").start()
    try:
        yield proc
    finally:
        proc.stop()
        flush(url)


def run(server: ServerProcess, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [*args, "--server", server.url], env={"VPETL_TOKEN": ""})
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_sync_int8_and_merged_graphs(server: ServerProcess, tmp_path: Path, mp4_clip: Path) -> None:
    _, adapter = make_adapter("bapat", {"bottleneck": 8}, task="cam")
    with httpx.Client(base_url=server.url, timeout=60) as http:
        assert http.put("/adapters/cam", content=adapter, headers=OCTET).status_code == 201
        for i in range(3):
            body = mp4_clip.read_bytes() + bytes(i)  # distinct sha256s, the same frames
            assert http.post("/datasets/cam/clips?label=walk&split=val", content=body, headers=MP4).status_code == 201
    cache = str(tmp_path / "cache")
    code, out, err = run(server, "sync", "--quant", "int8", "--merged", "cam", "--cache", cache, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["backbone"] == "downloaded" and report["graphs"] == {"cam": "downloaded"}
    shared = report["agreement"]["cam (bapat, int8)"]
    merged = report["agreement"]["cam (merged, int8)"]
    assert shared["clips"] == merged["clips"] == 3 and 0 <= shared["agree"] <= 3
    store = EdgeCache(cache)
    records = store.backbones()
    assert set(records) == {"default-int8", "merged-cam-int8"}  # default: the server picked the family
    for record in records.values():
        path, preoptimized = store.runner_graph(record)
        assert preoptimized and path.suffix == ".opt" and path.is_file()  # optimised once, at sync time
    # the merged graph is the one predict --local picks for this adapter: clip is its only input
    code, out, err = run(server, "predict", str(mp4_clip), "--task", "cam", "--local", "--json", "--cache", cache)
    assert code == 0, err
    (line,) = json.loads(out)
    assert (line["graph"], line["quant"]) == ("merged", "int8")
    # its prediction matches the fp32 shared graph's on the same clip (same adapter)
    fp32 = tmp_path / "fp32.onnx"
    fp32.write_bytes(httpx.get(server.url + "/backbone/onnx?family=bapat", timeout=60).content)
    reference = Runner(fp32).predict(mp4_clip, adapter)
    assert line["predictions"][0]["index"] == reference.predictions[0].index
    assert abs(line["predictions"][0]["score"] - reference.predictions[0].score) < 0.05
    # nothing new: no graph bytes move, the merged graph answers 304
    code, out, _ = run(server, "sync", "--quant", "int8", "--merged", "cam", "--cache", cache, "--json")
    again = json.loads(out)
    assert code == 0 and again["onnx_bytes"] == 0 and again["graphs"] == {"cam": "unchanged"}
    # the human-readable sync prints the agreement lines
    code, out, _ = run(server, "sync", "--quant", "int8", "--cache", cache)
    assert code == 0 and "top-1 agrees with fp32 on" in out and "validation clips" in out
    code, _, err = run(server, "sync", "--quant", "int4", "--cache", cache)
    assert code == 1 and "invalid_request" in err
    assert np.isfinite(shared["max_abs_logit_diff"])
