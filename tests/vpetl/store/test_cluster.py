"""Redis Cluster specifics: URL convention, events across nodes, a password-protected cluster, index hygiene.

The store's full behaviour on a cluster is covered by the other store tests, which run on both a standalone Redis
and a 3-master cluster (``redis_url`` in conftest.py); this module holds what only a cluster (or its URL) has.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio.cluster
import redis.asyncio.connection
import redis.cluster

from vpetl.store import AdapterStore, AsyncAdapterStore, ClipStore
from vpetl.store import keys as k
from vpetl.store.clients import (
    async_redis_client,
    is_cluster_url,
    ping_url,
    redis_client,
    split_cluster_url,
)

META = {"method": "lora"}


# ------------------------------------------------------------------------------------------------ URLs


def test_cluster_url_convention() -> None:
    assert is_cluster_url("redis+cluster://h:1") and is_cluster_url("rediss+cluster://h:1")
    assert not any(map(is_cluster_url, ["redis://h:1", "rediss://h", "unix:///tmp/r.sock"]))

    first, nodes = split_cluster_url("redis+cluster://user:p%40ss@a.example:7000,b.example,[::1]:7002/0?x=1")
    assert first == "redis://user:p%40ss@a.example:7000/0?x=1"  # credentials and query ride on the first node
    assert nodes == [("a.example", 7000), ("b.example", 6379), ("::1", 7002)]
    assert split_cluster_url("rediss+cluster://:pw@h:7000")[0] == "rediss://:pw@h:7000"
    for bad in ("redis://h:1", "redis+cluster://h:notaport", "redis+cluster://", "redis+cluster://h:1,,h:2"):
        with pytest.raises(ValueError):
            split_cluster_url(bad)
    with pytest.raises(ValueError, match="database"):
        async_redis_client("redis+cluster://h:7000/3")


def test_tls_and_password_reach_every_node_of_an_async_cluster_client() -> None:
    """The async cluster client connects lazily, so its per-node options can be checked without a server."""
    client = async_redis_client("rediss+cluster://alice:s3cret@h1:7000,h2:7001?ssl_cert_reqs=none")
    assert isinstance(client, redis.asyncio.cluster.RedisCluster)
    options = client.connection_kwargs
    assert options["connection_class"] is redis.asyncio.connection.SSLConnection
    assert (options["username"], options["password"], options["ssl_cert_reqs"]) == ("alice", "s3cret", "none")
    assert options["decode_responses"] is False
    assert sorted(node.port for node in client.startup_nodes) == [7000, 7001]


def test_plain_urls_still_build_plain_clients(redis_server_url: str) -> None:
    client = redis_client(redis_server_url)
    assert type(client) is redis.Redis and client.ping()
    client.close()
    assert type(async_redis_client("rediss://:pw@h:6380/2")) is redis.asyncio.Redis
    ping_url(redis_server_url)
    with pytest.raises((redis.RedisError, OSError)):
        ping_url("redis+cluster://127.0.0.1:1", timeout_s=0.2)  # nothing listens: a RedisError, not a crash


# ------------------------------------------------------------------------------------------------ a real cluster


def test_cluster_url_builds_a_cluster_client(cluster_url: str) -> None:
    client = redis_client(cluster_url)
    assert isinstance(client, redis.cluster.RedisCluster)
    assert len(client.get_primaries()) == 3 and client.ping()
    ping_url(cluster_url)
    client.close()


def _task_on_another_node(client: redis.cluster.RedisCluster, key: str) -> str:
    """A task name whose keys live on another master than ``key``."""
    avoid = client.get_node_from_key(key).name
    return next(t for t in (f"t{i}" for i in range(100)) if client.get_node_from_key(k.task_key(t)).name != avoid)


def test_events_reach_a_subscriber_on_another_node(cluster_url: str) -> None:
    """The publish script runs on the task's master; the subscriber listens on another one (the channel's)."""
    raw = redis_client(cluster_url)
    assert isinstance(raw, redis.cluster.RedisCluster)
    task = _task_on_another_node(raw, k.EVENTS_CHANNEL)
    raw.close()

    async def main() -> list[dict]:
        async with AsyncAdapterStore(cluster_url) as store, store.subscribe_events() as events:
            r1 = await store.publish(task, b"one", META)
            await store.rollback(task, 1)
            await store.delete(task)
            got = [await asyncio.wait_for(events.__anext__(), 5) for _ in range(3)]
            return [{**e, "ok": e["sha256"] == r1.sha256} for e in got]

    got = asyncio.run(main())
    assert [(e["event"], e["task"], e["version"], e["ok"]) for e in got] == [
        ("publish", task, 1, True),
        ("rollback", task, 1, True),
        ("delete", task, 1, True),
    ]


@pytest.fixture
def cluster_password(cluster_url: str) -> Iterator[str]:
    """The session cluster with ``requirepass`` set on every master for one test (cleared afterwards)."""
    password = "clu ster/p@ss"  # needs percent-encoding in a URL
    nodes = split_cluster_url(cluster_url)[1]
    for host, port in nodes:
        redis.Redis(host=host, port=port).config_set("requirepass", password)
    try:
        yield password
    finally:
        for host, port in nodes:
            redis.Redis(host=host, port=port, password=password).config_set("requirepass", "")


def test_password_protected_cluster(cluster_url: str, cluster_password: str, tmp_path: Path) -> None:
    from urllib.parse import quote

    url = cluster_url.replace("redis+cluster://", f"redis+cluster://:{quote(cluster_password, safe='')}@")
    with pytest.raises((redis.RedisError, OSError)):
        ping_url(cluster_url)  # without the password: refused
    ping_url(url)
    with AdapterStore(url) as store:
        record = store.publish("secret", b"bytes", META)
        assert store.get_bytes("secret") == (record, b"bytes")
        assert [t.task for t in store.list_tasks()] == ["secret"]

    async def main() -> None:
        async with AsyncAdapterStore(url) as astore, astore.subscribe_events() as events:
            await astore.publish("secret", b"more", META)
            event = await events.get(timeout=5)
            assert event is not None and event["version"] == 2

    asyncio.run(main())
    with AdapterStore(url) as store:
        store.delete("secret")


# ------------------------------------------------------------------------------------------------ index hygiene
# (standalone and cluster: the index sets live in their own slot on both)


def test_stale_index_names_are_skipped(redis_url: str, tmp_path: Path) -> None:
    """A crash between a data change and its index update leaves a name with no data: readers skip it."""
    raw = redis_client(redis_url)
    raw.sadd(k.TASKS, "ghost", "not a task name")
    raw.sadd(k.CLIP_TASKS, "ghost")
    with AdapterStore(redis_url) as store, ClipStore(tmp_path, redis_url) as clips:
        assert store.list_tasks() == [] and clips.tasks() == []
        store.publish("real", b"x", META)
        clips.add_clip("real", "wave", "train", b"clip")
        assert [t.task for t in store.list_tasks()] == ["real"] and clips.tasks() == ["real"]
        assert clips.delete_task("real") == 1
        assert clips.tasks() == [] and raw.smembers(k.CLIP_TASKS) == {b"ghost"}
    raw.close()
