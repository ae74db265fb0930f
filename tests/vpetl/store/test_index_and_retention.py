"""The sorted task index (pages by name, prefix, method; the legacy set adopted), one-call task detail, and
retention at publish — each on standalone Redis and on the 3-master cluster (``redis_url`` is parametrized)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from vpetl.errors import InvalidRequest, UnknownTask, UnknownVersion
from vpetl.store import AdapterStore, _ops
from vpetl.store import keys as k
from vpetl.store.clients import SyncClient, redis_client

META = {"method": "bapat", "trainable_params": 10, "num_classes": 3, "labels": ["a", "b", "c"]}


@pytest.fixture
def raw(redis_url: str) -> Iterator[SyncClient]:
    client = redis_client(redis_url)
    yield client
    client.close()


@pytest.fixture
def store(redis_url: str) -> Iterator[AdapterStore]:
    with AdapterStore(redis_url, keep_versions=3) as s:
        yield s


def _walk(store: AdapterStore, **filters: object) -> list[str]:
    names, cursor = [], None
    while True:
        page = store.list_page(cursor=cursor, **filters)  # type: ignore[arg-type]
        names += [t.task for t in page.tasks]
        if page.next_cursor is None:
            return names
        cursor = page.next_cursor


def test_pages_walk_the_index_in_name_order(store: AdapterStore, raw: SyncClient) -> None:
    names = [f"t{i:03d}" for i in range(25)] + ["cats", "cats.v2", "dogs"]
    for name in names:
        store.publish(name, b"x", {**META, "method": "lora" if name.startswith("c") else "bapat"})
    raw.zadd(k.TASKS_INDEX, {"t0105": 0})  # a stale name (a crash between index and data): skipped
    page = store.list_page(limit=10)
    assert [t.task for t in page.tasks] == sorted(names)[:10] and page.total == len(names) + 1
    assert page.next_cursor == sorted(names)[9]
    assert _walk(store, limit=7) == sorted(names)
    assert _walk(store, limit=1000) == sorted(names)
    assert _walk(store, limit=4, prefix="cats") == ["cats", "cats.v2"]
    assert store.list_page(prefix="t01", limit=100).total == 11  # t010..t019 and the stale t0105
    assert _walk(store, limit=3, method="lora") == ["cats", "cats.v2"]
    assert _walk(store, limit=2, prefix="t", method="lora") == []
    assert store.list_page(cursor="zzz").tasks == [] and store.list_page(cursor="zzz").next_cursor is None
    assert [t.task for t in store.list_tasks()] == sorted(names)


@pytest.mark.parametrize(
    "kwargs", [{"limit": 0}, {"limit": 1001}, {"cursor": "../x"}, {"prefix": "A"}, {"prefix": "a{b"}]
)
def test_page_arguments_are_checked_before_redis(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidRequest):
        next(_ops.list_page(**kwargs))  # type: ignore[arg-type]


def test_names_in_the_legacy_set_are_adopted(store: AdapterStore, raw: SyncClient) -> None:
    """A process of the previous release SADDs to ``vpetl:tasks``; readers move those names into the zset."""
    store.publish("new", b"x", META)
    store.publish("old", b"y", META)
    raw.zrem(k.TASKS_INDEX, "old")
    raw.sadd(k.TASKS, "old", "ghost")
    assert [t.task for t in store.list_page().tasks] == ["new", "old"]
    assert raw.smembers(k.TASKS) == set() and raw.zrange(k.TASKS_INDEX, 0, -1) == [b"ghost", b"new", b"old"]
    raw.sadd(k.TASKS, "old")
    assert [t.task for t in store.list_tasks()] == ["new", "old"] and not raw.exists(k.TASKS)


def test_delete_removes_the_index_name(store: AdapterStore, raw: SyncClient) -> None:
    store.publish("gone", b"x", META)
    store.delete("gone")
    assert raw.zrange(k.TASKS_INDEX, 0, -1) == [] and store.list_page().total == 0


def test_detail_is_one_script_call(store: AdapterStore) -> None:
    store.publish("one", b"a", META)
    store.publish("one", b"b", META)
    store.rollback("one", 1)
    op = _ops.detail("one")
    request = next(op)
    assert isinstance(request, _ops.Script) and request.name == "detail"
    summary, history = store.detail("one")
    assert (summary.version, summary.latest_version, summary.num_versions) == (1, 2, 2)
    assert [r.version for r in history] == [1, 2] and summary.current == history[0]
    with pytest.raises(UnknownTask):
        store.detail("nope")


def test_retention_keeps_the_newest_versions_and_their_blobs(store: AdapterStore, raw: SyncClient) -> None:
    blobs = [b"A", b"B", b"A", b"C", b"D"]  # v3 shares v1's bytes
    for data in blobs:
        store.publish("kept", data, META)
    history = store.history("kept")
    assert [r.version for r in history] == [3, 4, 5]  # keep_versions=3
    shas = {hashlib.sha256(d).hexdigest() for d in (b"A", b"C", b"D")}
    assert set(raw.hkeys(k.blobs_key("kept"))) == {s.encode() for s in shas}  # B freed; A still used by v3
    with pytest.raises(UnknownVersion):
        store.get_record("kept", 1)
    assert store.get_bytes("kept", 3)[1] == b"A"
    summary, _ = store.detail("kept")
    assert (summary.version, summary.latest_version, summary.num_versions) == (5, 5, 3)


def test_retention_never_removes_the_current_version(store: AdapterStore) -> None:
    for data in (b"1", b"2", b"3"):
        store.publish("cur", data, META)
    store.rollback("cur", 1)  # current = the oldest kept
    store.publish("cur", b"4", META)  # current moves to v4: v1 is now the oldest non-current, and goes
    assert [r.version for r in store.history("cur")] == [2, 3, 4] and store.get_pointer("cur") == 4


def test_keep_zero_keeps_everything(redis_url: str) -> None:
    with AdapterStore(redis_url, keep_versions=0) as store:
        for i in range(12):
            store.publish("all", bytes([i]), META)
        assert len(store.history("all")) == 12
    with pytest.raises(ValueError):
        AdapterStore(redis_url, keep_versions=-1)


def test_default_retention_is_ten(redis_url: str) -> None:
    with AdapterStore(redis_url) as store:
        for i in range(12):
            store.publish("ten", bytes([i]), META)
        assert [r.version for r in store.history("ten")] == list(range(3, 13))
