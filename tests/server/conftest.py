"""Fixtures for the server tests: real clips (PyAV mp4), real adapter files for ``videomae-tiny``, and a real
``vpetl serve`` process (uvicorn) that tests talk to over HTTP."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

BACKBONE = "videomae-tiny"
LABELS = ["walk", "run", "jump"]
START_TIMEOUT_S = 60.0


# ------------------------------------------------------------------------------------------------------ clips
def _mp4(path: Path, seed: int, frames: int = 16, size: int = 64) -> bytes:
    from vpetl.data.synth import write_mp4

    rng = np.random.default_rng(seed)
    video = (rng.random((frames, size, size, 3)) * 255).astype(np.uint8)  # (T, H, W, 3)
    write_mp4(path, video)
    return path.read_bytes()


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Named clip bodies: ``ok``/``ok2``/``ok3``/``ok4`` are real 16-frame 64² mp4s; the rest are broken on purpose."""
    root = tmp_path_factory.mktemp("clips")
    ok = _mp4(root / "ok.mp4", 0)
    return {
        "ok": ok,
        "ok2": _mp4(root / "ok2.mp4", 1),
        "ok3": _mp4(root / "ok3.mp4", 2),
        "ok4": _mp4(root / "ok4.mp4", 4),
        "truncated": ok[: len(ok) // 3],
        "random": np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "empty": b"",
        "text": b"this is not a video\n" * 10,
    }


# --------------------------------------------------------------------------------------------------- adapters
def make_adapter(
    task: str = "demo",
    *,
    seed: int = 0,
    method: str | Mapping[str, Any] = "bapat",
    labels: list[str] | None = None,
    backbone: Any = BACKBONE,
) -> bytes:
    """An adapter file for ``backbone`` with weights perturbed by ``seed`` (so versions predict differently)."""
    import torch

    from vpetl.petl import create_model
    from vpetl.petl.io import adapter_bytes

    labels = labels or LABELS
    model = create_model(backbone, method, len(labels), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.5)
    return adapter_bytes(model, task=task, labels=labels, metrics={"val_top1": 0.5 + seed / 100})


# ------------------------------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def vpetl_executable() -> str:
    """The ``vpetl`` entry point of the interpreter running the tests (the project's venv)."""
    candidate = Path(sys.executable).parent / "vpetl"
    found = str(candidate) if candidate.exists() else shutil.which("vpetl")
    if found is None:  # fail, never skip: a silent skip would pass every real-server suite without running it
        pytest.fail("the vpetl entry point is not installed: run `make install` (pip install -e .)")
    return found


@dataclass
class ServerProcess:
    """``vpetl serve --engine local`` as a child process, logging to ``log_path``."""

    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        # only the settings the test gives: a VPETL_* variable of the developer's shell must not leak in
        env = {k: v for k, v in os.environ.items() if not k.startswith("VPETL_")}
        env.update({"VPETL_TORCH_THREADS": "1", **self.env})
        cmd = [vpetl_executable(), "serve", "--engine", "local", "--port", str(self.port), *self.args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vpetl serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"vpetl serve not ready after {timeout:g} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown: lifespan end, embedded Redis stopped
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def db_url(server_url: str, db: int) -> str:
    """The session redis-server's URL on database ``db`` (the server tests keep off db 0, which other tests flush)."""
    return f"{server_url}?db={db}"


def flush(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


# ------------------------------------------------------------------------------------------------- assertions
def error_code(response: httpx.Response) -> str:
    """The stable code of an error response (and a check that the body has the contract's shape)."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"], body
    return str(body["error"]["code"])


def store_snapshot(client: httpx.Client) -> dict[str, Any]:
    """What must not change when a request is refused: the listing and every task's versions."""
    listing = client.get("/adapters")
    assert listing.status_code == 200, listing.text
    adapters = listing.json()["adapters"]
    versions = {}
    for info in adapters:
        detail = client.get(f"/adapters/{info['task']}")
        assert detail.status_code == 200, detail.text
        versions[info["task"]] = [(v["version"], v["sha256"], v["current"]) for v in detail.json()["versions"]]
    return {"adapters": adapters, "versions": versions}
