"""``vpetl-edge`` against the contract server: every command's --json output, one-line errors with exit 1,
``train --wait`` following a job to the end, ``sync`` moving nothing the second time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from edge_helpers import LABELS, make_adapter
from fake_server import FakeServer
from typer.testing import CliRunner

from edge_client.cli import app


@pytest.fixture(scope="module")
def adapter_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("adapters") / "hmdb.safetensors"
    path.write_bytes(make_adapter("bapat", {"bottleneck": 4}, task="hmdb")[1])
    return path


def run(fake: FakeServer, *args: str, token: str | None = None) -> tuple[int, str, str]:
    runner = CliRunner()
    env = {"VPETL_SERVER": fake.url, "VPETL_TOKEN": token or ""}
    result = runner.invoke(app, list(args), env=env)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_adapter_commands(fake: FakeServer, adapter_file: Path, tmp_path: Path) -> None:
    fake.state.token = "tok"
    code, out, err = run(fake, "adapters", "push", str(adapter_file), "--task", "hmdb", "--json")
    assert code == 1 and out == "" and err.strip() == "error [unauthorized]: this route needs an admin token"
    code, out, _ = run(fake, "adapters", "push", str(adapter_file), "--task", "hmdb", "--json", token="tok")
    assert code == 0 and json.loads(out)["version"] == 1
    run(fake, "adapters", "push", str(adapter_file), "--task", "hmdb", token="tok")
    code, out, _ = run(fake, "adapters", "ls", "--json")
    (info,) = json.loads(out)
    assert (info["task"], info["version"], info["labels"]) == ("hmdb", 2, LABELS)
    cache = str(tmp_path / "cache")
    code, out, _ = run(fake, "adapters", "pull", "hmdb", "--cache", cache, "--json")
    pulled = json.loads(out)
    assert code == 0 and pulled["downloaded"] and pulled["version"] == 2 and Path(pulled["path"]).is_file()
    code, out, _ = run(fake, "adapters", "pull", "hmdb", "--cache", cache, "--json")
    assert json.loads(out)["downloaded"] is False
    code, out, _ = run(fake, "adapters", "rollback", "hmdb", "1", "--json", token="tok")
    assert json.loads(out)["version"] == 1
    code, out, _ = run(fake, "adapters", "rm", "hmdb", "--cache", cache, "--json", token="tok")
    assert code == 0 and json.loads(out)["versions_removed"] == 2
    assert not (tmp_path / "cache" / "adapters" / "hmdb").exists()
    code, out, err = run(fake, "adapters", "pull", "hmdb", "--cache", cache)
    assert code == 1 and err.strip() == "error [unknown_task]: no task 'hmdb'"


def test_predict_and_upload_via_the_server(fake: FakeServer, adapter_file: Path, tmp_path: Path) -> None:
    fake.state.publish("hmdb", adapter_file.read_bytes())
    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(3):
        (clips / f"c{i}.mp4").write_bytes(b"\0" * (1000 + i))
    (clips / "notes.txt").write_text("not a video")
    code, out, _ = run(fake, "predict", str(clips / "c0.mp4"), "--task", "hmdb", "--topk", "2", "--json")
    (result,) = json.loads(out)
    assert code == 0 and result["local"] is False and [p["label"] for p in result["predictions"]] == LABELS[:2]
    code, out, _ = run(fake, "upload", str(clips), "--task", "hmdb", "--label", "run", "--split", "val", "--json")
    uploaded = json.loads(out)
    assert code == 0 and [u["size"] for u in uploaded] == [1000, 1001, 1002]  # the directory, videos only
    assert fake.state.clips["hmdb"] == {"val": {"run": 3}}
    code, _, err = run(fake, "upload", str(clips), "--task", "hmdb", "--label", "run", "--split", "test")
    assert code == 1 and err.startswith("error [invalid_request]: --split")
    code, _, err = run(fake, "predict", str(tmp_path / "missing.mp4"), "--task", "hmdb")
    assert code == 1 and err.startswith("error [invalid_video]:")


def test_train_wait_follows_the_job(fake: FakeServer) -> None:
    fake.state.current["hmdb"] = 1
    fake.state.job_epochs = 3
    code, out, _ = run(fake, "train", "--task", "hmdb", "--method", "bapat", "--bottleneck", "64", "--epochs", "3",
                       "--wait", "--poll", "0", "--json")
    job = json.loads(out)
    assert code == 0 and job["state"] == "succeeded" and job["progress"]["epoch"] == 3 and job["version"] == 1
    assert fake.state.jobs[job["id"]]["params"] == {"task": "hmdb", "method": "bapat", "bottleneck": 64, "epochs": 3}
    assert fake.state.jobs[job["id"]]["polls"] == 4  # queued, epoch 1, 2, 3
    code, out, _ = run(fake, "jobs", "--json")
    assert [j["id"] for j in json.loads(out)] == [job["id"]]
    code, out, _ = run(fake, "jobs", job["id"], "--json")
    assert json.loads(out)["state"] == "succeeded"
    code, _, err = run(fake, "jobs", "0000000000000bad")
    assert code == 1 and err.startswith("error [unknown_job]:")


def test_sync_twice_moves_nothing_the_second_time(fake: FakeServer, adapter_file: Path, tmp_path: Path,
                                                  tiny_graphs: dict[str, Path]) -> None:
    fake.state.publish("hmdb", adapter_file.read_bytes())
    fake.state.onnx["default"] = tiny_graphs["bapat"].read_bytes()
    cache = str(tmp_path / "cache")
    code, out, _ = run(fake, "sync", "--cache", cache, "--json")
    first = json.loads(out)
    assert code == 0 and first["adapters"] == {"hmdb": "updated"} and first["backbone"] == "downloaded"
    assert first["adapter_bytes"] == adapter_file.stat().st_size
    code, out, _ = run(fake, "sync", "--cache", cache, "--json")
    second = json.loads(out)
    assert second["adapters"] == {"hmdb": "unchanged"} and second["backbone"] == "present"
    assert (second["adapter_bytes"], second["onnx_bytes"], second["requests"]) == (0, 0, 1)


def test_unreachable_server_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["adapters", "ls", "--server", "http://127.0.0.1:9"], env={"VPETL_TOKEN": ""})
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error [connection_error]: cannot reach the vpetl server")


def test_sync_in_float16_then_predict_locally_without_a_second_download(
        fake: FakeServer, tmp_path: Path, tiny_graphs: dict[str, Path], mp4_clip: Path) -> None:
    data = make_adapter("bapat", {"bottleneck": 8}, task="demo")[1]
    fake.state.publish("demo", data)
    fake.state.onnx["default"] = tiny_graphs["bapat"].read_bytes()
    half, full = str(tmp_path / "half"), str(tmp_path / "full")
    code, out, _ = run(fake, "sync", "--dtype", "float16", "--cache", half, "--json")
    report = json.loads(out)
    assert code == 0 and report["adapters"] == {"demo": "updated"} and report["adapter_bytes"] < 0.6 * len(data)
    sent = fake.state.sent["adapter"]
    code, out, _ = run(fake, "predict", str(mp4_clip), "--task", "demo", "--local", "--json", "--cache", half)
    assert code == 0, out
    assert fake.state.sent["adapter"] == sent  # the fp16 copy is current: a 304, not a float32 re-download
    (from_half,) = json.loads(out)
    code, out, _ = run(fake, "predict", str(mp4_clip), "--task", "demo", "--local", "--json", "--cache", full)
    (from_full,) = json.loads(out)
    assert from_half["local"] and from_full["local"]
    for a, b in zip(from_half["predictions"], from_full["predictions"], strict=True):
        assert a["label"] == b["label"] and abs(a["score"] - b["score"]) < 1e-2
    code, out, err = run(fake, "adapters", "pull", "demo", "--dtype", "int8", "--cache", half)
    assert code == 1 and err.startswith("error [invalid_request]:"), err


def test_predict_local_falls_back_to_the_cache_when_the_server_is_gone(
        tmp_path: Path, tiny_graphs: dict[str, Path], mp4_clip: Path) -> None:
    cache = str(tmp_path / "cache")
    with FakeServer() as fake:
        fake.state.publish("demo", make_adapter("bapat", {"bottleneck": 8}, task="demo")[1])
        fake.state.onnx["default"] = tiny_graphs["bapat"].read_bytes()
        code, out, _ = run(fake, "sync", "--cache", cache, "--json")
        assert code == 0 and json.loads(out)["adapters"] == {"demo": "updated"}
        code, out, _ = run(fake, "predict", str(mp4_clip), "--task", "demo", "--local", "--json", "--cache", cache)
        (online,) = json.loads(out)
        dead = fake.url
    # the server is gone now (its port refuses connections): the cached adapter and graph still predict
    args = ["predict", str(mp4_clip), "--task", "demo", "--local", "--json", "--cache", cache, "--server", dead]
    result = CliRunner().invoke(app, args, env={"VPETL_TOKEN": ""})
    assert result.exit_code == 0, result.stderr
    assert "server unreachable: using the cached demo adapter (version 1)" in result.stderr
    (offline,) = json.loads(result.stdout)
    assert offline["local"] and offline["version"] == 1 and offline["predictions"] == online["predictions"]
    # a version the cache does not hold cannot be made up offline: a clear error, not a guess
    result = CliRunner().invoke(app, ["predict", str(mp4_clip), "--task", "demo", "--local", "--version", "2",
                                      "--cache", cache, "--server", dead], env={"VPETL_TOKEN": ""})  # fmt: skip
    assert result.exit_code == 1 and "connection_error" in result.stderr
