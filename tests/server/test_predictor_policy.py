"""The ``per-task`` batching policy (the stock-Serve baseline): same logits as ``mixed``, one forward per task.

In process: a real AdapterBank on ``videomae-tiny``, a real Redis (the session's redis-server) behind an
AsyncAdapterStore with three published adapters, and the Predictor's own micro-batcher.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
import torch

from server.predictor import Predictor, _Item
from tests.server.conftest import BACKBONE, flush, make_adapter
from vpetl.backbones import create_backbone
from vpetl.petl.bank import AdapterBank
from vpetl.store import AsyncAdapterStore

TASKS = ("alpha", "beta", "gamma")
PER_TASK = 3  # clips per task in the mixed batch


def _clips(n: int) -> list[np.ndarray]:
    spec = create_backbone(BACKBONE).input_spec
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(3, spec.num_frames, spec.size, spec.size, generator=gen).numpy() for _ in range(n)]


def _count_forwards(bank: AdapterBank) -> list[list[str]]:
    """Wrap ``bank.forward``; the returned list gets the task names of each call's clips."""
    calls: list[list[str]] = []
    forward: Callable[..., Any] = bank.forward

    def counting(clips: torch.Tensor, keys: Sequence[tuple[str, int]]) -> Any:
        calls.append([task for task, _ in keys])
        return forward(clips, keys)

    bank.forward = counting  # type: ignore[method-assign]
    return calls


async def _serve(redis_url: str, policy: str) -> tuple[list[torch.Tensor], list[list[float]], list[list[str]]]:
    """Publish the tasks, then: the logits of one interleaved batch through ``_run_batch`` directly, and the scores
    of the same clips sent concurrently through ``predict`` (one micro-batch), with the forwards each made."""
    store = AsyncAdapterStore(redis_url)
    for seed, task in enumerate(TASKS):
        await store.publish(task, make_adapter(task, seed=seed + 1), {})
    bank = AdapterBank(create_backbone(BACKBONE))
    predictor = Predictor(
        bank, store, max_batch_size=len(TASKS) * PER_TASK, max_wait_ms=2000, batch_policy=policy  # type: ignore[arg-type]
    )
    try:
        tasks = [TASKS[i % len(TASKS)] for i in range(len(TASKS) * PER_TASK)]  # interleaved: a, b, c, a, b, …
        clips = _clips(len(tasks))
        for task in TASKS:
            await predictor.ensure_loaded(task, await predictor.resolve(task, None))
        items = [_Item(torch.from_numpy(c), (t, 1)) for c, t in zip(clips, tasks, strict=True)]
        direct = predictor._run_batch(items)
        logits = []
        for result in direct:
            assert not isinstance(result, BaseException), result
            logits.append(result[0])
        calls = _count_forwards(bank)
        predictions = await asyncio.gather(
            *(predictor.predict(c, t, topk=3) for c, t in zip(clips, tasks, strict=True))
        )
        scores = [[p["score"] for p in sorted(pred.predictions, key=lambda p: p["index"])] for pred in predictions]
        return logits, scores, calls
    finally:
        await predictor.stop()
        await store.aclose()


def test_per_task_policy_matches_mixed_and_runs_one_forward_per_task(redis_url: str) -> None:
    torch.set_num_threads(2)
    mixed_logits, mixed_scores, mixed_calls = asyncio.run(_serve(redis_url, "mixed"))
    flush(redis_url)  # the second run publishes the same tasks as version 1 again
    split_logits, split_scores, split_calls = asyncio.run(_serve(redis_url, "per-task"))

    for a, b in zip(mixed_logits, split_logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.array(mixed_scores), np.array(split_scores), atol=1e-5)
    assert len({tuple(s) for s in mixed_scores}) > 1  # the adapters differ, so the comparison means something

    # mixed: the whole micro-batch is one forward; per-task: one forward per task, each with only that task's clips
    assert len(mixed_calls) == 1 and sorted(mixed_calls[0]) == sorted(TASKS * PER_TASK)
    assert len(split_calls) == len(TASKS)
    assert sorted(tuple(c) for c in split_calls) == [(t,) * PER_TASK for t in TASKS]


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="batch_policy"):
        Predictor(None, None, batch_policy="per-model")  # type: ignore[arg-type]
