"""Asyncio micro-batcher: requests of ANY task join one queue and leave as mixed-task batches.

Why our own and not ``@serve.batch``: Ray Serve splits every batch by multiplexed model id, so it cannot form the
mixed-task batches the AdapterBank runs in one backbone forward (DESIGN.md). The same class runs under uvicorn
(local engine) and inside every Ray Serve predictor replica.

Policy: the first request opens a batch; it closes when ``max_batch_size`` requests are in or ``max_wait_ms`` has
passed since it opened. The queue is bounded: a submit beyond ``max_queue`` fails at once with
:class:`~vpetl.errors.Overloaded` (503 + Retry-After), so overload sheds load instead of growing latency.
The batch function runs on the batcher's *own* single-thread executor (not asyncio's default pool), so the model
never queues behind decodes, adapter loads or other ``to_thread`` work, and forwards never overlap each other.
A caller that gave up while queued (deadline, disconnect) is dropped from its batch before the forward runs.
:class:`Admission` bounds the requests a route lets in at all, so a full server answers 503 before reading a body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from vpetl.errors import Overloaded

logger = logging.getLogger(__name__)

Req = TypeVar("Req")
Res = TypeVar("Res")


@dataclass
class _Pending(Generic[Req]):
    item: Req
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    rejected: int = 0
    last_batch_size: int = 0


class MicroBatcher(Generic[Req, Res]):
    """Collects submitted items into batches and resolves each caller with its own result.

    ``batch_fn(items) -> results`` gets a list and returns one result per item in order; a result that is an
    ``Exception`` instance fails only that item's caller (one unknown task does not fail its batch-mates).
    ``on_batch(size, queue_wait_s_list)`` is an optional metrics callback.
    """

    def __init__(
        self,
        batch_fn: Callable[[list[Req]], Sequence[Res | BaseException]],
        *,
        max_batch_size: int = 8,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
        on_batch: Callable[[int, list[float]], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be >= 1")
        self.batch_fn = batch_fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Pending[Req]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The one thread every forward runs on (created on first use; a closed batcher makes a new one)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vpetl-forward")
        return self._executor

    @property
    def full(self) -> bool:
        """Whether a submit now would be refused (the route checks this before reading a body)."""
        return self.queue_depth >= self.max_queue

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def _ensure_started(self) -> asyncio.Queue[_Pending[Req]]:
        if self._queue is None:
            self._queue = asyncio.Queue(maxsize=self.max_queue)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="vpetl-micro-batcher")
        return self._queue

    async def submit(self, item: Req) -> tuple[Res, float]:
        """Queue ``item``; return (its result, seconds it waited in the queue)."""
        queue = self._ensure_started()
        pending = _Pending(item, asyncio.get_running_loop().create_future())
        try:
            queue.put_nowait(pending)
        except asyncio.QueueFull:
            self.stats.rejected += 1
            raise Overloaded(f"the prediction queue is full ({self.max_queue} waiting); retry shortly") from None
        result, waited = await pending.future
        if isinstance(result, BaseException):
            raise result
        return result, waited

    async def _collect(self, queue: asyncio.Queue[_Pending[Req]]) -> list[_Pending[Req]]:
        batch = [await queue.get()]
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            # Take whatever is already queued without waiting, then wait out the rest of the window.
            try:
                batch.append(queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), timeout=remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            batch = [p for p in await self._collect(queue) if not p.future.done()]  # callers gone: no forward
            if not batch:
                continue
            started = time.perf_counter()
            waits = [started - p.enqueued for p in batch]
            try:
                results = await loop.run_in_executor(self.executor, self.batch_fn, [p.item for p in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batch_fn returned {len(results)} results for {len(batch)} items")
            except Exception as e:  # a failure of the whole batch fails each caller, never the loop
                logger.exception("batch of %d failed", len(batch))
                results = [e] * len(batch)
            self.stats.batches += 1
            self.stats.items += len(batch)
            self.stats.last_batch_size = len(batch)
            if self.on_batch is not None:
                self.on_batch(len(batch), waits)
            for pending, result, waited in zip(batch, results, waits, strict=True):
                if not pending.future.done():
                    pending.future.set_result((result, waited))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._queue = None  # bound to this event loop; a restart (e.g. a second app lifespan) makes a new one
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None


class Admission:
    """How many requests a route is working on (reading, decoding, queued, in the model); refuses past ``limit``.

    Checked at the very start of a route, before its body is read: under overload the server spends nothing on
    a request it cannot serve, and the client gets 503 + Retry-After at once instead of after its upload.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self.active = 0
        self.rejected = 0

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        if self.active >= self.limit:
            self.rejected += 1
            raise Overloaded(f"the server is working on {self.active} predictions already; retry shortly")
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
