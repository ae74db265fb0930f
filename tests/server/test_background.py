"""server/background.py: caches' listener/check tasks start under their names and stop together, including one
that already failed (stopping a cache never raises because its listener died earlier)."""

from __future__ import annotations

import asyncio

from server.background import start_background, stop_background


def test_tasks_start_named_and_stop_together() -> None:
    async def main() -> tuple[list[str], list[bool], list[bool]]:
        async def forever() -> None:
            await asyncio.sleep(3600)

        async def fails() -> None:
            raise RuntimeError("listener died")

        tasks = start_background({"a-listener": forever(), "a-check": fails()})
        await asyncio.sleep(0)  # let the failing one fail
        names = [t.get_name() for t in tasks]
        await stop_background(tasks)
        return names, [t.done() for t in tasks], [t.cancelled() for t in tasks]

    names, done, cancelled = asyncio.run(main())
    assert names == ["a-listener", "a-check"]
    assert done == [True, True] and cancelled == [True, False]  # the failed one finished with its own error
