"""The current-version pointer of each task, cached in this process and kept fresh from Redis.

A listener on ``vpetl:events`` applies a publish, rollback or delete as soon as it is visible; a periodic pointer
check (one round trip for every cached task) covers events missed while the subscription was down (pub/sub is
at-most-once). A cached task resolves without touching Redis, so a Redis outage does not stop predictions of tasks
this process already knows. Used by the local predictor (which also drops stale adapters when a pointer moves)
and by the Ray Serve ingress (which has no adapters, only the routing decision).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from server.background import start_background, stop_background
from vpetl.errors import UnknownTask
from vpetl.store import AsyncAdapterStore

logger = logging.getLogger(__name__)

OnChange = Callable[[str, "int | None", "int | None"], None]  # (task, old version, new version or None = deleted)


class PointerCache:
    """Cached ``task -> current version``.

    Args:
        store: the async adapter store.
        check_s: period of the pointer re-check.
        on_change: called after a cached pointer moved or was removed (task, old, new).
    """

    def __init__(self, store: AsyncAdapterStore, check_s: float = 0.5, on_change: OnChange | None = None) -> None:
        self.store, self.check_s, self.on_change = store, check_s, on_change
        self.pointers: dict[str, int] = {}
        self._background: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._background = start_background(
            {"vpetl-events": self._watch_events(), "vpetl-pointer-check": self._check_pointers()}
        )

    async def stop(self) -> None:
        await stop_background(self._background)
        self._background = []

    def apply(self, task: str, version: int | None) -> None:
        """Record that ``task`` now points at ``version`` (None: the task was deleted)."""
        old = self.pointers.get(task)
        if version is None:
            self.pointers.pop(task, None)
        else:
            self.pointers[task] = version
        if self.on_change is not None:
            self.on_change(task, old, version)

    async def resolve(self, task: str, version: int | None) -> int:
        """The version a request runs on: the one asked for, else the cached pointer, else Redis."""
        if version is not None:
            return version
        cached = self.pointers.get(task)
        if cached is not None:
            return cached
        current = await self.store.get_pointer(task)
        if current is None:
            raise UnknownTask(f"no adapter is published for task {task!r}")
        self.pointers[task] = current
        return current

    async def _watch_events(self) -> None:
        while True:
            try:
                async with self.store.subscribe_events() as events:
                    async for event in events:
                        task = event.get("task")
                        if not isinstance(task, str):
                            continue
                        if event.get("event") == "delete":
                            self.apply(task, None)
                        elif isinstance(event.get("version"), int) and event.get("event") == "publish":
                            self.apply(task, event["version"])
                        else:  # rollback (or anything else): read the pointer itself
                            self.apply(task, await self.store.get_pointer(task))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis restarted: resubscribe after a pause; cached pointers keep serving
                logger.warning("event subscription lost (%s); retrying", e)
                await asyncio.sleep(0.5)

    async def _check_pointers(self) -> None:
        while True:
            await asyncio.sleep(self.check_s)
            tasks = list(self.pointers)
            if not tasks:
                continue
            try:
                current = await self.store.get_pointers(tasks)
            except Exception as e:
                logger.debug("pointer check failed: %s", e)
                continue
            for task, version in current.items():
                if self.pointers.get(task) != version:
                    self.apply(task, version)
