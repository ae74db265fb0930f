"""``vpetl serve --json``: a JSON line on stdout once the API answers (a client may connect right after reading it),
one when it stops, and nothing else on stdout (logs stay on stderr). ``vpetl worker --json`` is exercised by
tests/server/ui/test_console.py (a job queued from the console), ``vpetl up --json`` by tests/e2e/test_up.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.conftest import BACKBONE, db_url, flush, free_port, vpetl_executable

pytestmark = pytest.mark.integration


def test_serve_json_reports_ready_then_stopped(redis_server_url: str, tmp_path: Path) -> None:
    url = db_url(redis_server_url, 10)
    flush(url)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VPETL_")} | {"VPETL_TORCH_THREADS": "1"}
    cmd = [vpetl_executable(), "serve", "--engine", "local", "--port", str(port), "--redis-url", url,
           "--backbone", BACKBONE, "--data-dir", str(tmp_path / "data"), "--json"]  # fmt: skip
    with (tmp_path / "stderr.log").open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env)
    try:
        assert proc.stdout is not None
        started = time.monotonic()
        first = proc.stdout.readline()  # blocks until the line: no polling of the port
        assert first, (tmp_path / "stderr.log").read_text()[-3000:]
        ready = json.loads(first)
        assert time.monotonic() - started < 60
        # answered at once: the line is printed only after the lifespan started and the socket listens
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
        backbone = httpx.get(f"http://127.0.0.1:{port}/backbone", timeout=5).json()
        assert ready == {
            "event": "ready", "url": f"http://127.0.0.1:{port}", "ui": f"http://127.0.0.1:{port}/ui/",
            "docs": f"http://127.0.0.1:{port}/docs", "engine": "local", "backbone": BACKBONE,
            "backbone_sha256": backbone["sha256"], "replicas": 1, "dtype": "fp32", "auth": False,
        }  # fmt: skip
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        flush(url)
    assert rest.splitlines() and all(line.startswith(b"{") for line in rest.splitlines()), rest[-2000:]
    assert [json.loads(line) for line in rest.splitlines()] == [{"event": "stopped", "engine": "local"}]


def _leaves(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if hasattr(command, "commands"):  # a group: its sub-commands
        for name, sub in command.commands.items():
            yield from _leaves(sub, (*path, name))
    else:
        yield path, command


def test_every_command_takes_json() -> None:
    """README: "Every command takes `--json`". Each leaf command of `vpetl` and `vpetl-edge`, walked from the typer
    apps themselves (a new command without the flag fails here)."""
    import typer

    from edge_client.cli import app as edge_app
    from server.cli import app

    # `vpetl bench NAME ARGS…` hands its extra args to the benchmark script, which takes --json itself
    passthrough = {("vpetl", "bench")}
    # commands whose only output is JSON lines already (README says so beside its --json sentence)
    json_only = {("vpetl-edge", "watch")}
    seen, missing = 0, []
    for root, typer_app in (("vpetl", app), ("vpetl-edge", edge_app)):
        for path, command in _leaves(typer.main.get_command(typer_app)):
            seen += 1
            if (root, *path) in passthrough:
                assert command.context_settings.get("allow_extra_args"), path
                continue
            if (root, *path) in json_only:
                assert "JSON line" in (command.help or ""), path
                continue
            if not any("--json" in param.opts for param in command.params):
                missing.append(" ".join((root, *path)))
    assert seen >= 25 and missing == []
