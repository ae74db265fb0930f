from __future__ import annotations

import asyncio
import threading

import pytest

from server.batcher import MicroBatcher
from vpetl.errors import Overloaded, UnknownTask


def test_batches_form_up_to_max_size_and_results_map_back() -> None:
    seen: list[list[int]] = []

    def double(items: list[int]) -> list[int]:
        seen.append(list(items))
        return [2 * i for i in items]

    async def main() -> list[int]:
        batcher = MicroBatcher(double, max_batch_size=4, max_wait_ms=50)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        await batcher.close()
        return [r for r, _ in results]

    assert asyncio.run(main()) == [2 * i for i in range(10)]
    assert max(len(b) for b in seen) == 4
    assert sorted(i for b in seen for i in b) == list(range(10))


def test_one_failed_item_fails_only_its_caller() -> None:
    def fn(items: list[str]) -> list[object]:
        return [UnknownTask(f"no task {i}") if i == "bad" else i.upper() for i in items]

    async def main() -> tuple[object, ...]:
        batcher = MicroBatcher(fn, max_batch_size=8, max_wait_ms=20)
        out = await asyncio.gather(
            batcher.submit("a"), batcher.submit("bad"), batcher.submit("c"), return_exceptions=True
        )
        await batcher.close()
        return tuple(out)

    a, bad, c = asyncio.run(main())
    assert a[0] == "A" and c[0] == "C"
    assert isinstance(bad, UnknownTask)


def test_bounded_queue_rejects_then_recovers() -> None:
    gate = threading.Event()

    def slow(items: list[int]) -> list[int]:
        gate.wait(5)
        return items

    async def main() -> tuple[int, int, list[int]]:
        batcher = MicroBatcher(slow, max_batch_size=1, max_wait_ms=0, max_queue=3)
        tasks = [asyncio.ensure_future(batcher.submit(i)) for i in range(10)]
        await asyncio.sleep(0.1)
        gate.set()
        out = await asyncio.gather(*tasks, return_exceptions=True)
        rejected = sum(isinstance(o, Overloaded) for o in out)
        ok = sum(not isinstance(o, BaseException) for o in out)
        later = await batcher.submit(99)  # recovers once the queue drains
        await batcher.close()
        return rejected, ok, [later[0]]

    rejected, ok, later = asyncio.run(main())
    assert rejected >= 5 and ok >= 1 and rejected + ok == 10
    assert later == [99]


def test_max_wait_bounds_latency_of_a_lone_request() -> None:
    """A lone request is dispatched alone once max_wait passes — it does not wait for a full batch of 64. Causes, not
    wall time: exactly one batch, of size 1, whose item waited at least max_wait for company."""
    batches: list[tuple[int, list[float]]] = []

    async def main() -> list[int]:
        batcher = MicroBatcher(lambda items: items, max_batch_size=64, max_wait_ms=30,
                               on_batch=lambda size, waits: batches.append((size, waits)))  # fmt: skip
        out = await asyncio.wait_for(batcher.submit(1), timeout=30)  # never a full batch: must still return
        await batcher.close()
        return [out[0]]

    assert asyncio.run(main()) == [1]
    assert [size for size, _ in batches] == [1]
    assert batches[0][1][0] >= 0.029  # it did wait for companions (a lower bound holds on a busy host)


def test_whole_batch_exception_reaches_every_caller() -> None:
    def boom(items: list[int]) -> list[int]:
        raise RuntimeError("engine exploded")

    async def main() -> list[object]:
        batcher = MicroBatcher(boom, max_batch_size=4, max_wait_ms=10)
        out = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
        await batcher.close()
        return out

    out = asyncio.run(main())
    assert all(isinstance(o, RuntimeError) for o in out)


def test_invalid_config() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(lambda x: x, max_batch_size=0)
