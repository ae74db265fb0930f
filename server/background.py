"""The long-lived asyncio tasks a cache keeps beside a request path (an event listener plus a periodic check, as
the pointer cache and the API-key cache both do): started together, cancelled and awaited together."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any


def start_background(named: dict[str, Coroutine[Any, Any, None]]) -> list[asyncio.Task[None]]:
    """One task per coroutine on the running loop, each under its name (shown in asyncio's debug output)."""
    loop = asyncio.get_running_loop()
    return [loop.create_task(coro, name=name) for name, coro in named.items()]


async def stop_background(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel every task, then wait for each to finish; a task that had already failed is not re-raised here
    (stopping must not fail because a listener died earlier)."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
