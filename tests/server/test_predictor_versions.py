"""Two README promises of the predictor, in process with a real AdapterBank and a real Redis: concurrent cold
requests for one adapter load it once, and a request finishes on the version it started with even when a new
version is published (and its event handled) while it waits for its batch."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import torch

from server.predictor import Predictor
from tests.server.conftest import BACKBONE, make_adapter
from vpetl.backbones import create_backbone
from vpetl.petl.bank import AdapterBank
from vpetl.store import AsyncAdapterStore


def _clip() -> np.ndarray:
    spec = create_backbone(BACKBONE).input_spec
    return torch.randn(3, spec.num_frames, spec.size, spec.size, generator=torch.Generator().manual_seed(0)).numpy()


def test_concurrent_cold_requests_load_the_adapter_once(redis_url: str) -> None:
    async def main() -> tuple[int, int, set[int]]:
        store = AsyncAdapterStore(redis_url)
        await store.publish("cold", make_adapter("cold", seed=1), {})
        bank = AdapterBank(create_backbone(BACKBONE))
        predictor = Predictor(bank, store, max_batch_size=8, max_wait_ms=50)
        fetches = 0
        get_bytes = store.get_bytes

        async def counted(*args: object) -> object:
            nonlocal fetches
            fetches += 1
            return await get_bytes(*args)  # type: ignore[arg-type]

        store.get_bytes = counted  # type: ignore[method-assign]
        await predictor.start()
        try:
            clip = _clip()
            out = await asyncio.gather(*(predictor.predict(clip, "cold") for _ in range(8)))
        finally:
            await predictor.stop()
            await store.aclose()
        return bank.cache.stats.loads, fetches, {p.version for p in out}

    loads, fetches, versions = asyncio.run(main())
    assert (loads, fetches, versions) == (1, 1, {1})


def test_a_request_finishes_on_the_version_it_started_with(redis_url: str) -> None:
    async def main() -> tuple[object, object, object, list[tuple[str, int]]]:
        store = AsyncAdapterStore(redis_url)
        v1 = await store.publish("swap", make_adapter("swap", seed=1), {})
        bank = AdapterBank(create_backbone(BACKBONE))
        predictor = Predictor(bank, store, max_batch_size=8, max_wait_ms=5, pointer_check_s=0.05)
        gate, entered = threading.Event(), threading.Event()
        forward = bank.forward
        seen: list[tuple[str, int]] = []

        def held(clips: torch.Tensor, keys: list[tuple[str, int]]) -> object:
            seen.extend(keys)
            entered.set()
            gate.wait(30)  # the batch holds here until v2 is published and applied
            return forward(clips, keys)

        bank.forward = held  # type: ignore[method-assign]
        await predictor.start()
        try:
            clip = _clip()
            first = asyncio.create_task(predictor.predict(clip, "swap"))
            await asyncio.to_thread(entered.wait, 30)
            v2 = await store.publish("swap", make_adapter("swap", seed=2), {})
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while predictor.pointers.get("swap") != 2:  # the event (or the check) moved the pointer meanwhile
                assert loop.time() < deadline
                await asyncio.sleep(0.02)
            gate.set()
            started_on_v1 = await first
            after = await predictor.predict(clip, "swap")
        finally:
            gate.set()
            await predictor.stop()
            await store.aclose()
        return (v1, v2, (started_on_v1, after), seen)

    v1, v2, (started_on_v1, after), seen = asyncio.run(main())
    assert started_on_v1.version == 1 and started_on_v1.adapter_sha256 == v1.sha256  # type: ignore[attr-defined]
    assert after.version == 2 and after.adapter_sha256 == v2.sha256  # type: ignore[attr-defined]
    assert seen[0] == ("swap", 1)
