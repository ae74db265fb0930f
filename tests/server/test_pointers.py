"""The pointer cache (server/pointers.py) against a real Redis: events move cached pointers at once, and when
pub/sub delivers nothing (a dropped subscription: pub/sub is at-most-once) the periodic check still does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from server.pointers import PointerCache
from vpetl.errors import UnknownTask
from vpetl.store import AsyncAdapterStore


class _Deaf:
    """An event subscription that never delivers anything (what a silently dropped connection looks like)."""

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[AsyncIterator[dict]]:
        async def nothing() -> AsyncIterator[dict]:
            await asyncio.Event().wait()
            yield {}  # pragma: no cover

        yield nothing()


def test_events_move_pointers_and_the_periodic_check_covers_missed_ones(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        store = AsyncAdapterStore(redis_url)
        changes: list[tuple[str, int | None, int | None]] = []
        cache = PointerCache(store, check_s=0.1, on_change=lambda t, old, new: changes.append((t, old, new)))
        await store.publish("live", b"v1 bytes", {})
        await cache.start()
        try:
            assert await cache.resolve("live", None) == 1
            with pytest.raises(UnknownTask):
                await cache.resolve("nope", None)

            # 1. with events: a publish moves the cached pointer
            await store.publish("live", b"v2 bytes", {})
            await _until(lambda: cache.pointers.get("live") == 2)
            assert ("live", 1, 2) in changes

            # 2. events blocked: only the periodic check (get_pointers) can see the next publish
            await cache.stop()
            monkeypatch.setattr(store, "subscribe_events", _Deaf())
            checks = 0
            real = store.get_pointers

            async def counted(tasks: list[str]) -> dict[str, int | None]:
                nonlocal checks
                checks += 1
                return await real(tasks)

            monkeypatch.setattr(store, "get_pointers", counted)
            await cache.start()
            await store.publish("live", b"v3 bytes", {})
            await _until(lambda: cache.pointers.get("live") == 3)
            assert checks >= 1 and ("live", 2, 3) in changes  # it came from the check, the only path left
            # a delete is seen the same way: the pointer leaves the cache
            await store.delete("live")
            await _until(lambda: "live" not in cache.pointers)
            assert changes[-1] == ("live", 3, None)
        finally:
            await cache.stop()
            await store.aclose()

    asyncio.run(main())


async def _until(predicate: object, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)
