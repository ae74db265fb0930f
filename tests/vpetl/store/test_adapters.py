"""The Redis adapter store: versions, immutability, atomic pointer flips, events, delete, errors, reconnects."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from vpetl.errors import InvalidRequest, UnknownTask, UnknownVersion
from vpetl.store import AdapterStore, AsyncAdapterStore, EmbeddedRedis, TaskSummary, VersionRecord, _ops
from vpetl.store import keys as k
from vpetl.store.clients import SyncClient, redis_client, split_cluster_url

META = {
    "method": "patt",
    "trainable_params": 1234,
    "num_classes": 3,
    "metrics": {"val_top1": 0.75},
    "backbone": "videomae-tiny",
    "backbone_sha256": "a" * 64,
    "labels": ["wave", "clap", "point"],
}

BAD_TASK_NAMES = ["", "A", "a/b", "../etc", "a..b", "..", "-a", " a", "a b", "tâche", "a" * 65, "a" * 1000, "a\n"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def all_keys(client: SyncClient) -> list[bytes]:
    """Every key, sorted (on a cluster: gathered from every master, not just the default node)."""
    if isinstance(client, redis.cluster.RedisCluster):
        return sorted(client.keys("*", target_nodes=redis.cluster.RedisCluster.PRIMARIES))
    return sorted(client.keys("*"))


@pytest.fixture
def raw(redis_url: str) -> Iterator[SyncClient]:
    client = redis_client(redis_url)  # a cluster client on the cluster run
    yield client
    client.close()


@pytest.fixture
def store(redis_url: str) -> Iterator[AdapterStore]:
    with AdapterStore(redis_url) as s:
        yield s


# ------------------------------------------------------------------------------------------------ basics


def test_publish_get_history_list(store: AdapterStore) -> None:
    r1 = store.publish("gestures", b"v1-bytes", META)
    r2 = store.publish("gestures", b"v2-bytes", {**META, "metrics": {"val_top1": 0.8}})

    assert (r1.version, r2.version) == (1, 2)
    assert r1.sha256 == sha(b"v1-bytes") and r1.size == len(b"v1-bytes") and r1.task == "gestures"
    assert r1.method == "patt" and r1.num_classes == 3 and r1.labels == ["wave", "clap", "point"]
    assert store.get_pointer("gestures") == 2
    assert store.get_record("gestures") == r2
    assert store.get_record("gestures", 1) == r1
    assert store.get_bytes("gestures") == (r2, b"v2-bytes")
    assert store.get_bytes("gestures", 1) == (r1, b"v1-bytes")
    assert store.get_blob("gestures", r1.sha256) == b"v1-bytes"
    assert store.history("gestures") == [r1, r2]

    store.publish("other", b"o", {"method": "lora"})
    tasks = store.list_tasks()
    assert [t.task for t in tasks] == ["gestures", "other"]
    summary = tasks[0]
    assert isinstance(summary, TaskSummary)
    assert (summary.version, summary.latest_version, summary.num_versions) == (2, 2, 2)
    assert summary.current == r2
    assert summary.created_at <= summary.updated_at
    assert store.get_pointers(["gestures", "other", "missing", "gestures"]) == {
        "gestures": 2,
        "other": 1,
        "missing": None,
    }
    assert store.get_pointers([]) == {}
    assert store.ping()


def test_record_keeps_metadata_and_store_fields_win(store: AdapterStore) -> None:
    meta = {**META, "task": "impostor", "sha256": "0" * 64, "size": -1, "version": 99, "created_at": "1999",
            "custom": {"nested": [1, 2.5, None, "ü"]}}  # fmt: skip
    record = store.publish("t1", b"data", meta)

    assert (record.version, record.task, record.sha256, record.size) == (1, "t1", sha(b"data"), 4)
    assert record.created_at.year > 2000
    dumped = record.model_dump(mode="json")
    assert dumped["custom"] == {"nested": [1, 2.5, None, "ü"]}  # unknown keys are kept as given
    assert VersionRecord.model_validate_json(record.model_dump_json()) == record


BAD_PUBLISH_INPUT = [
    (b"", {}),
    ("text", {}),
    (b"x", {"metrics": {"top1": float("nan")}}),
    (b"x", {"o": object()}),
    (b"x", ["not", "a", "dict"]),
    (b"x", {1: "non-str key"}),
    # well-formed JSON that readers could not parse back as a VersionRecord
    (b"x", {"metrics": [0.5]}),
    (b"x", {"labels": "wave"}),
    (b"x", {"num_classes": "three"}),
]


def test_publish_rejects_bad_input(store: AdapterStore, raw: SyncClient) -> None:
    for data, meta in BAD_PUBLISH_INPUT:
        with pytest.raises(InvalidRequest):
            store.publish("t1", data, meta)  # type: ignore[arg-type]
    assert raw.dbsize() == 0


def test_client_with_decoded_responses_is_refused(redis_url: str) -> None:
    if redis_url.startswith("redis+cluster://"):
        host, port = split_cluster_url(redis_url)[1][0]
        client: SyncClient = redis.cluster.RedisCluster(host=host, port=port, decode_responses=True)
    else:
        client = redis.Redis.from_url(redis_url, decode_responses=True)
    with pytest.raises(ValueError, match="decode_responses"):
        AdapterStore(client)
    client.close()


# ------------------------------------------------------------------------------------------------ immutability


def test_versions_are_immutable_and_republish_makes_a_new_version(store: AdapterStore, raw: SyncClient) -> None:
    a, b = b"A" * 100, b"B" * 100
    v1 = store.publish("t1", a, META)
    v2 = store.publish("t1", b, META)
    v3 = store.publish("t1", a, META)  # same bytes as v1 (and as v2's predecessor): a new version, same blob

    assert [v1.version, v2.version, v3.version] == [1, 2, 3]
    assert v3.sha256 == v1.sha256 != v2.sha256
    assert store.get_bytes("t1", 1) == (v1, a)
    assert store.get_bytes("t1", 2) == (v2, b)
    assert store.get_bytes("t1", 3) == (v3, a)
    assert raw.hlen(k.blobs_key("t1")) == 2  # content-addressed: one blob per distinct artifact of the task

    v4 = store.publish("t1", a, META)  # re-publishing the current version's bytes is allowed too
    assert (v4.version, v4.sha256) == (4, v3.sha256)
    assert store.get_record("t1", 1) == v1  # earlier records untouched


def test_abandoned_publish_leaves_only_an_index_name_that_readers_skip(store: AdapterStore, raw: SyncClient) -> None:
    """A publisher that dies after its first request (the index SADD) leaves no task: nothing half-written, and the
    stale index name is skipped by list_tasks."""
    op = _ops.publish("t1", b"orphan", META)
    first = next(op)
    assert isinstance(first, _ops.Command) and first.args[0] == "ZADD"
    raw.execute_command(*first.args)  # ... and then the publisher "dies"
    op.close()

    assert raw.zrange(k.TASKS_INDEX, 0, -1) == [b"t1"]
    assert store.get_pointer("t1") is None and store.list_tasks() == []
    assert not raw.exists(k.blobs_key("t1"), k.versions_key("t1"))
    assert store.publish("t1", b"orphan", META).version == 1
    assert [t.task for t in store.list_tasks()] == ["t1"]


def _step(store: AdapterStore, op: _ops.Op, reply: object = None) -> object:
    """Run the op's next request on the store's Redis and return its reply (StopIteration at the end)."""
    return store._execute(op.send(reply))


def test_index_stays_right_when_delete_races_publish(store: AdapterStore) -> None:
    """The worst interleaving for the index (another slot than the task): publish's first SADD, then the whole
    delete, then publish's script. The task exists at the end, so the index must still name it."""
    store.publish("t1", b"one", META)
    pub = _ops.publish("t1", b"two", META)
    sadd = _step(store, pub)  # publish: SADD tasks
    store.delete("t1")  # delete: script, SREM, re-check (no pointer yet), done
    reply = _step(store, pub, sadd)  # publish: the script re-creates the task (version 2: never reused)
    with pytest.raises(StopIteration) as done:
        _step(store, pub, _step(store, pub, reply))  # publish: second SADD, then it returns
    assert done.value.value.version == 2
    assert [(t.task, t.version) for t in store.list_tasks()] == [("t1", 2)]

    # the other order: delete's SREM lands after publish's second SADD; its re-check puts the name back
    delete = _ops.delete("t1")
    reply = _step(store, delete)  # delete: script
    store.publish("t1", b"three", META)  # SADD, script, SADD
    reply = _step(store, delete, _step(store, delete, reply))  # SREM, re-check: the pointer is back
    assert store.list_tasks() == []  # the moment the index misses the task (a name is SADDed back next) ...
    with pytest.raises(StopIteration):
        _step(store, delete, _step(store, delete, reply))  # SADD back, then it returns
    assert [(t.task, t.version) for t in store.list_tasks()] == [("t1", 3)]


def test_every_request_of_one_task_stays_in_one_slot() -> None:
    """What Redis Cluster needs: every script names all its keys, and they hash to one slot (the task's tag)."""
    from redis.crc import key_slot

    ops = [
        _ops.publish("t1", b"x", META),
        _ops.get("t1", None, with_blob=True),
        _ops.get("t1", 2, with_blob=False),
        _ops.history("t1"),
        _ops.rollback("t1", 1),
        _ops.delete("t1"),
        _ops.list_tasks(),
        _ops.get_pointers(["t1", "t2"]),
    ]
    for op in ops:
        request = next(op)
        while True:
            items = request.requests if isinstance(request, _ops.Batch) else (request,)
            for item in items:
                if isinstance(item, _ops.Script):
                    assert len({key_slot(key.encode()) for key in item.keys}) == 1, item.keys
                    assert all(key.startswith("vpetl:{") for key in item.keys)
            try:  # a plausible reply to go on with: "ok" for scripts, a present pointer / a task name otherwise
                request = op.send(_fake_reply(request))
            except (StopIteration, Exception):
                break
    assert key_slot(k.task_key("t1").encode()) == key_slot(k.blobs_key("t1").encode()) == key_slot(b"t1")
    assert key_slot(k.clips_key("t1").encode()) == key_slot(k.clip_counts_key("t1").encode()) == key_slot(b"t1")
    assert len({key_slot(key.encode()) for key in (k.JOB_STREAM, k.JOB_INDEX, k.job_key("0" * 16))}) == 1


def _fake_reply(request: _ops.Request) -> object:
    if isinstance(request, _ops.Batch):
        return [None] * len(request.requests)
    if isinstance(request, _ops.Script):
        return [0]
    return {b"t1"} if request.args[0] == "SMEMBERS" else 1


# One atomic look at the raw keys (the test's own script, not the store's): the pointer, whether the versions hash
# has its record, and whether the blobs hash has that record's bytes. Three separate reads would race retention:
# ten publishes between reading the pointer and its record prune that record legitimately.
_SNAPSHOT = """
local pointer = redis.call('HGET', KEYS[1], 'current')
if not pointer then return {} end
local record = redis.call('HGET', KEYS[2], pointer)
if not record then return {pointer, 0, 0} end
return {pointer, 1, redis.call('HEXISTS', KEYS[3], cjson.decode(record)['sha256'])}
"""


def test_reader_never_sees_a_pointer_without_record_or_blob(store: AdapterStore, redis_url: str) -> None:
    """A reader polling the raw keys during 50 publishes always finds the record and blob the pointer names."""
    stop = threading.Event()
    problems: list[str] = []
    seen: set[int] = set()

    def reader() -> None:
        client = redis_client(redis_url)
        reader_store = AdapterStore(client)
        keys = (k.task_key("busy"), k.versions_key("busy"), k.blobs_key("busy"))
        try:
            while not stop.is_set():
                snapshot = client.eval(_SNAPSHOT, len(keys), *keys)
                if snapshot:
                    pointer, has_record, has_blob = snapshot
                    if not has_record:
                        problems.append(f"pointer {pointer!r} without record")
                        continue
                    if not has_blob:
                        problems.append(f"pointer {pointer!r} without blob")
                    seen.add(int(pointer))
                    rec, data = reader_store.get_bytes("busy")
                    if sha(data) != rec.sha256:
                        problems.append(f"version {rec.version}: bytes do not match sha256")
        finally:
            client.close()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(50):
            store.publish("busy", i.to_bytes(4, "big") * 5000, META)
    finally:
        stop.set()
        thread.join(10)
    assert not problems, problems[:5]
    assert seen and max(seen) <= 50
    assert store.get_pointer("busy") == 50


# ------------------------------------------------------------------------------------------------ rollback


def test_rollback_moves_the_pointer_only(store: AdapterStore) -> None:
    v1 = store.publish("t1", b"one", META)
    store.publish("t1", b"two", META)

    assert store.rollback("t1", 1) == v1
    assert store.get_pointer("t1") == 1
    assert store.get_bytes("t1") == (v1, b"one")
    summary = store.list_tasks()[0]
    assert (summary.version, summary.latest_version) == (1, 2)
    assert store.publish("t1", b"three", META).version == 3  # latest + 1, not current + 1
    assert store.rollback("t1", 2).version == 2  # roll "forward" is fine too

    with pytest.raises(UnknownVersion):
        store.rollback("t1", 7)
    with pytest.raises(UnknownTask):
        store.rollback("nope", 1)
    for bad in (0, -1, True, "1", 1.0):
        with pytest.raises(InvalidRequest):
            store.rollback("t1", bad)  # type: ignore[arg-type]
    assert store.get_pointer("t1") == 2


# ------------------------------------------------------------------------------------------------ errors


def test_unknown_task_and_version(store: AdapterStore) -> None:
    for call in (
        lambda: store.get_record("nope"),
        lambda: store.get_bytes("nope"),
        lambda: store.get_record("nope", 1),
        lambda: store.history("nope"),
        lambda: store.delete("nope"),
    ):
        with pytest.raises(UnknownTask) as info:
            call()
        assert info.value.code == "unknown_task"
    assert store.get_pointer("nope") is None

    store.publish("t1", b"one", META)
    for call in (lambda: store.get_record("t1", 2), lambda: store.get_bytes("t1", 99)):
        with pytest.raises(UnknownVersion) as vinfo:
            call()
        assert vinfo.value.code == "unknown_version"
    assert store.get_blob("t1", "f" * 64) is None
    with pytest.raises(InvalidRequest):
        store.get_blob("t1", "../x")


def _every_call(store: AdapterStore, name: object) -> list:
    return [
        lambda: store.publish(name, b"x", META),  # type: ignore[arg-type]
        lambda: store.get_record(name),  # type: ignore[arg-type]
        lambda: store.get_bytes(name, 1),  # type: ignore[arg-type]
        lambda: store.history(name),  # type: ignore[arg-type]
        lambda: store.rollback(name, 1),  # type: ignore[arg-type]
        lambda: store.delete(name),  # type: ignore[arg-type]
        lambda: store.get_pointer(name),  # type: ignore[arg-type]
        lambda: store.get_pointers(["good", name]),  # type: ignore[list-item]
    ]


@pytest.mark.parametrize("name", [*BAD_TASK_NAMES, None, 3])
def test_bad_task_names_are_refused_before_redis(name: object, store: AdapterStore, raw: SyncClient) -> None:
    store.publish("good", b"g", META)
    before = {key: raw.dump(key) for key in all_keys(raw)}
    assert len(before) == 4  # pointer, versions and bytes of "good", and the task index
    # a store whose Redis does not exist: any call reaching it would raise ConnectionError, not InvalidRequest
    offline = AdapterStore(redis.Redis(unix_socket_path="/nonexistent/redis.sock", retry=Retry(NoBackoff(), 0)))
    for calls in (_every_call(store, name), _every_call(offline, name)):
        for call in calls:
            with pytest.raises(InvalidRequest, match="invalid task name"):
                call()
    assert {key: raw.dump(key) for key in all_keys(raw)} == before


# ------------------------------------------------------------------------------------------------ delete


def test_delete_frees_the_tasks_blobs_and_leaves_other_tasks_alone(store: AdapterStore, raw: SyncClient) -> None:
    only_a, shared = b"only in a", b"shared by a and b"
    store.publish("a", only_a, META)
    store.publish("a", shared, META)
    store.publish("a", shared, META)  # same bytes again: stored once within the task
    rb = store.publish("b", shared, META)

    assert store.delete("a") == {"versions": 3, "blobs_freed": 2}
    assert not raw.exists(k.blobs_key("a"), k.versions_key("a"))
    assert raw.hgetall(k.blobs_key("b")) == {sha(shared).encode(): shared}  # b has its own copy
    assert store.get_pointer("a") is None
    assert [t.task for t in store.list_tasks()] == ["b"]
    assert raw.zrange(k.TASKS_INDEX, 0, -1) == [b"b"]
    assert store.get_bytes("b") == (rb, shared)
    with pytest.raises(UnknownTask):
        store.get_record("a")

    # a re-created task never reuses a version number: (task, version) names one artifact forever
    assert store.publish("a", b"new a", META).version == 4
    assert [r.version for r in store.history("a")] == [4]

    store.delete("a")
    store.delete("b")
    assert all_keys(raw) == [k.task_key("a").encode(), k.task_key("b").encode()]  # only 'latest' stays
    assert store.list_tasks() == []


# ------------------------------------------------------------------------------------------------ async + events


def test_events_follow_publish_rollback_delete(redis_url: str) -> None:
    async def main() -> list[dict]:
        async with AsyncAdapterStore(redis_url) as store, store.subscribe_events() as events:
            r1 = await store.publish("t1", b"one", META)
            r2 = await store.publish("t1", b"two", META)
            await store.rollback("t1", 1)
            await store.delete("t1")
            got = [await asyncio.wait_for(events.__anext__(), 5) for _ in range(4)]
            assert await events.get(timeout=0.05) is None
            assert (r1.version, r2.version) == (1, 2)
            return got

    got = asyncio.run(main())
    s1, s2 = sha(b"one"), sha(b"two")
    assert got == [
        {"event": "publish", "task": "t1", "version": 1, "sha256": s1},
        {"event": "publish", "task": "t1", "version": 2, "sha256": s2},
        {"event": "rollback", "task": "t1", "version": 1, "sha256": s1},
        {"event": "delete", "task": "t1", "version": 1, "sha256": s1},
    ]


def test_event_stream_skips_foreign_messages(redis_url: str, raw: SyncClient) -> None:
    async def main() -> dict | None:
        async with AsyncAdapterStore(redis_url) as store, store.subscribe_events() as events:
            raw.publish(k.EVENTS_CHANNEL, b"not json")
            raw.publish(k.EVENTS_CHANNEL, b'{"no": "task"}')
            await store.publish("t1", b"one", META)
            return await events.get(timeout=5)

    event = asyncio.run(main())
    assert event is not None and event["event"] == "publish" and event["version"] == 1


def test_event_stream_as_a_plain_async_iterator(redis_url: str) -> None:
    async def main() -> dict:
        async with AsyncAdapterStore(redis_url) as store:
            events = store.subscribe_events()
            await events.subscribe()
            await store.publish("t1", b"one", META)
            try:
                async for event in events:
                    return event
            finally:
                await events.aclose()
        raise AssertionError("no event")

    assert asyncio.run(main())["task"] == "t1"


def test_async_store_matches_sync_store(redis_url: str, store: AdapterStore) -> None:
    async def main() -> None:
        async with AsyncAdapterStore(redis_url) as astore:
            r1 = await astore.publish("t1", b"one", META)
            assert await astore.get_bytes("t1") == (r1, b"one")
            assert await astore.get_record("t1", 1) == r1
            assert await astore.get_pointer("t1") == 1
            assert await astore.get_pointers(["t1", "t2"]) == {"t1": 1, "t2": None}
            assert await astore.get_blob("t1", r1.sha256) == b"one"
            assert [t.task for t in await astore.list_tasks()] == ["t1"]
            await astore.publish("t1", b"two", META)
            assert (await astore.rollback("t1", 1)).version == 1
            assert [r.version for r in await astore.history("t1")] == [1, 2]
            with pytest.raises(UnknownTask):
                await astore.get_record("nope")
            with pytest.raises(InvalidRequest):
                await astore.get_record("../x")
            assert await astore.ping()

    asyncio.run(main())
    assert store.get_pointer("t1") == 1  # the sync store sees what the async one wrote
    assert store.delete("t1") == {"versions": 2, "blobs_freed": 2}


# ------------------------------------------------------------------------------------------------ Redis restart


def test_store_survives_a_redis_restart(tmp_path: Path) -> None:
    """Stop the server and start a new one on the same dir/socket: the same store objects keep working (AOF
    kept the data; redis-py reconnects; the scripts are re-loaded on NOSCRIPT)."""
    data_dir = tmp_path / "redis"
    server = EmbeddedRedis(data_dir).start()
    try:
        store = AdapterStore(server.url)
        r1 = store.publish("t1", b"before restart", META)

        async def async_phase() -> None:
            nonlocal server
            async with AsyncAdapterStore(server.url) as astore:
                assert await astore.get_pointer("t1") == 1
                server.stop()
                server = EmbeddedRedis(data_dir).start()
                assert await astore.get_bytes("t1") == (r1, b"before restart")
                assert (await astore.publish("t1", b"async after", META)).version == 2

        asyncio.run(async_phase())
        server.stop()
        server = EmbeddedRedis(data_dir).start()
        assert store.get_bytes("t1", 1) == (r1, b"before restart")
        assert store.publish("t1", b"sync after", META).version == 3
        assert [r.version for r in store.history("t1")] == [1, 2, 3]
        store.close()
    finally:
        server.stop()
