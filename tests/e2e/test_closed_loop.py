"""The closed loop, end to end, as the compose services run it — but as local processes: redis-server,
``vpetl serve --engine ray`` and ``vpetl worker``; then ``vpetl-edge`` ONLY (subprocesses of the CLI):

upload labelled synthetic clips for a new task → ``train --wait`` → the server serves it (``predict``) →
``adapters pull`` → ``predict --local`` agrees with the server → upload more clips, retrain, and see version 2
served and pulled by ``sync``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from vpetl.data.synth import synthesize
from vpetl.store import EmbeddedRedis

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BACKBONE = "videomae-tiny"
TOKEN = "e2e-secret"
BIN = Path(sys.executable).parent


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Services:
    """The compose services as local processes (each in its own process group, logs under the tmp dir)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.port = _free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("VPETL_")}
        self.env.update({"VPETL_ADMIN_TOKEN": TOKEN, "VPETL_TORCH_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0",
                         "RAY_AUTH_MODE": "disabled", "VPETL_EDGE_CACHE": str(root / "edge-cache")})

    def start(self, name: str, args: list[str]) -> None:
        log = self.root / f"{name}.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen([str(BIN / "vpetl"), *args], stdout=fh, stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True)
        self.procs.append((proc, log))

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-2500:]}" for _, log in self.procs)

    def stop(self) -> None:
        for proc, _ in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
        for proc, _ in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Services, str]]:
    root = tmp_path_factory.mktemp("e2e")
    with EmbeddedRedis(root / "redis", port=_free_port()) as redis_server:  # TCP, as the compose service
        services = Services(root)
        data = root / "data"  # the volume api and trainer share (clips)
        services.start("api", ["serve", "--engine", "ray", "--host", "127.0.0.1", "--port", str(services.port),
                               "--redis-url", redis_server.url, "--backbone", BACKBONE, "--data-dir", str(data),
                               "--max-wait-ms", "10"])
        services.start("trainer", ["worker", "--redis-url", redis_server.url, "--backbone", BACKBONE,
                                   "--data-dir", str(data), "--threads", "1"])
        base = f"http://127.0.0.1:{services.port}"
        try:
            deadline = time.monotonic() + 240
            while True:
                try:
                    if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "api not ready\n" + services.logs()
                assert all(p.poll() is None for p, _ in services.procs), services.logs()
                time.sleep(0.5)
            yield services, base
        finally:
            services.stop()


def edge(services: Services, base: str, *args: str, timeout: float = 300) -> object:
    """Run ``vpetl-edge … --json`` and return its parsed stdout (failing with its stderr and the service logs)."""
    cmd = [str(BIN / "vpetl-edge"), *args, "--server", base, "--token", TOKEN, "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=services.env)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}\n{services.logs()}"
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def test_closed_loop(stack: tuple[Services, str], tmp_path: Path) -> None:
    services, base = stack
    root = synthesize("appearance", tmp_path / "clips", clips_per_class=4, seed=3, size=64, frames=(12, 16))
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())[:3]
    clips = {c: sorted((root / c).glob("*.mp4")) for c in classes}

    # 1. upload labelled clips for a new task (the last clip of each class is held back for round two)
    for label, paths in clips.items():
        edge(services, base, "upload", *map(str, paths[:2]), "--task", "e2e", "--label", label)
        edge(services, base, "upload", str(paths[2]), "--task", "e2e", "--label", label, "--split", "val")

    # 2. train and wait
    job = edge(services, base, "train", "--task", "e2e", "--method", "bapat", "--bottleneck", "8", "--epochs", "3",
               "--batch-size", "3", "--wait", "--poll", "0.5")
    assert job["state"] == "succeeded" and job["version"] == 1, job  # type: ignore[index]

    # 3. the server serves it
    probe = str(clips[classes[0]][0])
    (served,) = edge(services, base, "predict", probe, "--task", "e2e", "--topk", "3")  # type: ignore[misc]
    assert served["version"] == 1 and {p["label"] for p in served["predictions"]} == set(classes)

    # 4. pull the adapter, predict locally with onnxruntime, agree with the server
    edge(services, base, "adapters", "pull", "e2e")
    (local,) = edge(services, base, "predict", probe, "--task", "e2e", "--topk", "3", "--local")  # type: ignore[misc]
    assert local["version"] == 1
    server_scores = {p["label"]: p["score"] for p in served["predictions"]}
    local_scores = {p["label"]: p["score"] for p in local["predictions"]}
    assert local["predictions"][0]["label"] == served["predictions"][0]["label"]
    assert all(abs(local_scores[k] - server_scores[k]) <= 1e-3 for k in server_scores), (local, served)

    # 5. more clips, retrain, version 2 served and pulled by sync
    for label, paths in clips.items():
        edge(services, base, "upload", str(paths[3]), "--task", "e2e", "--label", label)
    job2 = edge(services, base, "train", "--task", "e2e", "--method", "bapat", "--bottleneck", "8", "--epochs", "3",
                "--batch-size", "3", "--publish-if-worse", "--wait", "--poll", "0.5")
    assert job2["version"] == 2, job2  # type: ignore[index]
    deadline = time.monotonic() + 5
    while True:
        (again,) = edge(services, base, "predict", probe, "--task", "e2e")  # type: ignore[misc]
        if again["version"] == 2:
            break
        assert time.monotonic() < deadline, again
    synced = edge(services, base, "sync")
    assert synced["adapters"]["e2e"] == "updated" and synced["adapter_bytes"] > 0, synced  # type: ignore[index]
    (local2,) = edge(services, base, "predict", probe, "--task", "e2e", "--local")  # type: ignore[misc]
    assert local2["version"] == 2
    nothing_new = edge(services, base, "sync")
    assert nothing_new["adapters"]["e2e"] == "unchanged" and nothing_new["adapter_bytes"] == 0  # type: ignore[index]
