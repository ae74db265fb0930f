"""Idempotent publish per training job id (on standalone Redis and on a 3-master cluster, see conftest.py)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from redis.crc import key_slot

from vpetl.errors import InvalidRequest
from vpetl.store import AdapterStore, AsyncAdapterStore
from vpetl.store import keys as k

META = {"method": "lora"}


def test_a_job_publishes_one_version_however_often_it_retries(redis_url: str) -> None:
    store = AdapterStore(redis_url)
    first = store.publish("t", b"attempt-1", META, job_id="ab12")
    again = store.publish("t", b"attempt-2 retrained", META, job_id="ab12")  # a takeover that trained again
    assert again.version == first.version == 1 and again.sha256 == first.sha256
    assert store.job_version("t", "ab12") == 1 and store.job_version("t", "cd34") is None
    other = store.publish("t", b"attempt-1", META, job_id="cd34")  # another job: its own version
    plain = store.publish("t", b"no job", META)  # no job id: every publish is a new version, as before
    assert (other.version, plain.version) == (2, 3)
    assert [r.version for r in store.history("t")] == [1, 2, 3] and store.get_pointer("t") == 3


def test_concurrent_publishes_of_one_job_make_one_version(redis_url: str) -> None:
    store = AdapterStore(redis_url)
    versions: list[int] = []
    threads = [
        threading.Thread(
            target=lambda i=i: versions.append(
                store.publish("race", f"bytes-{i}".encode(), META, job_id="feed").version
            )
        )
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert versions == [1] * 8 and len(store.history("race")) == 1


def test_async_store_and_delete_forget_the_jobs(redis_url: str) -> None:
    async def main() -> None:
        async with AsyncAdapterStore(redis_url) as store:
            assert (await store.publish("a", b"x", META, job_id="01")).version == 1
            assert (await store.publish("a", b"y", META, job_id="01")).version == 1
            assert await store.job_version("a", "01") == 1
            await store.delete("a")
            assert await store.job_version("a", "01") is None  # the map went with the versions
            # a job re-run after its task was deleted publishes anew (version numbers are never reused)
            assert (await store.publish("a", b"z", META, job_id="01")).version == 2

    asyncio.run(main())


def test_job_ids_are_validated_and_share_the_task_slot(redis_url: str) -> None:
    store = AdapterStore(redis_url)
    for bad in ("", "XYZ", "../x", "a" * 65, 7):
        with pytest.raises(InvalidRequest):
            store.publish("t", b"x", META, job_id=bad)  # type: ignore[arg-type]
    assert store.get_pointer("t") is None
    assert key_slot(k.task_jobs_key("t").encode()) == key_slot(k.task_key("t").encode())
