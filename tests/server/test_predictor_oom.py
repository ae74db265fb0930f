"""A forward that runs out of memory: retried once as two half batches, else 503 ``overloaded`` — never a 500;
and forwards run on the batcher's own thread, not asyncio's default pool."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import torch

from server.batcher import MicroBatcher
from server.predictor import Predictor, _Item
from vpetl.errors import Overloaded
from vpetl.petl.data_path import DataPath, Stager


class FakeBank:
    """``forward`` raises out-of-memory for batches larger than ``fits`` (0: always)."""

    def __init__(self, fits: int, error: type[BaseException] = MemoryError) -> None:
        self.fits, self.error = fits, error
        self.calls: list[int] = []
        self.stager = Stager(torch.device("cpu"), DataPath())  # the bank's batch stacking, as served

    def forward(self, clips: torch.Tensor, keys: list[Any]) -> list[torch.Tensor]:
        self.calls.append(clips.shape[0])
        if clips.shape[0] > self.fits:
            raise self.error("out of memory (simulated)")
        return [clip.flatten()[:3] for clip in clips]


def predictor(bank: FakeBank) -> Predictor:
    return Predictor(bank, store=None, max_batch_size=8)  # type: ignore[arg-type]


def items(n: int) -> list[_Item]:
    return [_Item(torch.full((3, 2, 4, 4), float(i)), ("t", 1)) for i in range(n)]


@pytest.mark.parametrize("error", [MemoryError, torch.OutOfMemoryError])
def test_oom_batch_is_split_once_into_halves(error: type[BaseException]) -> None:
    bank = FakeBank(fits=2, error=error)
    p = predictor(bank)
    out = p._run_batch(items(4))
    assert bank.calls == [4, 2, 2]
    assert [float(r[0][0]) for r in out] == [0.0, 1.0, 2.0, 3.0]  # each caller gets its own row back
    assert p.oom_splits == 1


def test_oom_that_does_not_fit_in_halves_is_overloaded() -> None:
    bank = FakeBank(fits=1)
    out = predictor(bank)._run_batch(items(4))
    assert bank.calls == [4, 2, 2]  # split once, not recursively
    assert all(isinstance(r, Overloaded) and r.http_status == 503 for r in out)
    single = predictor(FakeBank(fits=0))._run_batch(items(1))
    assert isinstance(single[0], Overloaded)


def test_per_task_policy_splits_too() -> None:
    bank = FakeBank(fits=1)
    p = Predictor(bank, store=None, batch_policy="per-task")  # type: ignore[arg-type]
    out = p._run_batch(items(2))
    assert bank.calls == [2, 1, 1] and not any(isinstance(r, BaseException) for r in out)


def test_forwards_run_on_the_batchers_own_thread() -> None:
    seen: list[str] = []

    def batch_fn(xs: list[int]) -> list[int]:
        seen.append(threading.current_thread().name)
        return xs

    async def main() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher(batch_fn, max_batch_size=4, max_wait_ms=1)
        try:
            await asyncio.gather(*(batcher.submit(i) for i in range(6)))
        finally:
            await batcher.close()

    asyncio.run(main())
    assert seen and all(name.startswith("vpetl-forward") for name in seen)


def test_a_caller_that_gave_up_is_not_computed() -> None:
    computed: list[int] = []

    def batch_fn(xs: list[int]) -> list[int]:
        computed.extend(xs)
        return xs

    async def main() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher(batch_fn, max_batch_size=4, max_wait_ms=50)
        try:
            gone = asyncio.ensure_future(batcher.submit(1))
            await asyncio.sleep(0.005)
            gone.cancel()  # e.g. its deadline passed while the batch was still collecting
            assert (await batcher.submit(2))[0] == 2
        finally:
            await batcher.close()

    asyncio.run(main())
    assert computed == [2]
