"""The predictor: one AdapterBank behind one micro-batcher, fed from the Redis adapter store.

Per request: resolve the task's version (the request's, else the current pointer), make sure that (task, version)
is loaded (per-key lock: concurrent requests for one cold adapter load it once; other tasks never wait on it), pin
it so the request finishes on the version it started with, and join the next mixed-task batch.

Freshness: a listener on ``vpetl:events`` updates the pointer cache and drops stale versions as soon as a version
is published, rolled back or deleted; a periodic pointer check covers missed events (pub/sub is at-most-once).
The same class runs in the local engine (uvicorn) and in every Ray Serve predictor replica.

Hardening: encoded clips are decoded in a bounded pool of decoder processes (server/decode_pool.py); forwards run
on the batcher's own single thread; a forward that runs out of memory is retried once as two half batches, and
what still does not fit answers 503 ``overloaded`` (never a 500).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from server.batcher import MicroBatcher
from server.decode_pool import DecodePool
from server.pointers import PointerCache
from vpetl.errors import IncompatibleAdapter, InvalidAdapter, Overloaded, VpetlError
from vpetl.petl.bank import AdapterBank
from vpetl.petl.bank_tasks import TaskAdapter
from vpetl.store import AsyncAdapterStore

logger = logging.getLogger(__name__)

Key = tuple[str, int]
BatchPolicy = Literal["mixed", "per-task"]
BATCH_POLICIES: tuple[BatchPolicy, ...] = ("mixed", "per-task")
# torch.OutOfMemoryError (a CUDA/accelerator allocation) is torch >= 2.5; MemoryError is a host allocation.
OOM_ERRORS: tuple[type[BaseException], ...] = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),
                                               MemoryError)


@dataclass
class Prediction:
    task: str
    version: int
    adapter_sha256: str
    predictions: list[dict[str, Any]]
    timing_ms: dict[str, float] = field(default_factory=dict)
    replica: str = "local"

    def to_dict(self) -> dict[str, Any]:
        return {
            "replica": self.replica,
            "task": self.task,
            "version": self.version,
            "adapter_sha256": self.adapter_sha256,
            "predictions": self.predictions,
            "timing_ms": self.timing_ms,
        }


@dataclass
class _Item:
    clip: torch.Tensor  # (C, T, H, W)
    key: Key


class Predictor:
    """Mixed-task predictions over an :class:`AdapterBank`.

    Args:
        bank: the engine (owns the frozen backbone).
        store: the async Redis adapter store.
        max_batch_size / max_wait_ms / max_queue: micro-batcher policy.
        batch_policy: ``mixed`` (default: one backbone forward per collected batch, whatever its tasks) or
            ``per-task`` (the baseline: split the collected batch by (task, version) and run one forward per group,
            sequentially — what stock ``@serve.batch`` + multiplexing does, since it splits batches by model id).
        pointer_check_s: period of the pointer re-check.
        decoder: the decode pool for encoded clips (default: 2 decoder processes, the /predict limits).
        on_batch / on_load: metrics callbacks.
    """

    def __init__(
        self,
        bank: AdapterBank,
        store: AsyncAdapterStore,
        *,
        max_batch_size: int = 8,
        max_wait_ms: float = 5.0,
        max_queue: int = 64,
        pointer_check_s: float = 0.5,
        batch_policy: BatchPolicy = "mixed",
        decoder: DecodePool | None = None,
        on_batch: Callable[[int, list[float]], None] | None = None,
        on_load: Callable[[str, float], None] | None = None,
    ) -> None:
        if batch_policy not in BATCH_POLICIES:
            raise ValueError(f"batch_policy must be one of {BATCH_POLICIES}, not {batch_policy!r}")
        self.bank, self.store = bank, store
        self.batch_policy: BatchPolicy = batch_policy
        self.batcher: MicroBatcher[_Item, tuple[Any, float]] = MicroBatcher(
            self._run_batch,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            on_batch=on_batch,
        )
        self.on_load = on_load
        self.decoder = decoder or DecodePool()
        self.oom_splits = 0  # batches retried as halves after an out-of-memory forward
        self.pointer_cache = PointerCache(store, pointer_check_s, on_change=self._on_pointer_change)
        self._load_locks: dict[Key, asyncio.Lock] = {}
        self.replica_id, self.node_id = "local", ""  # set by a Ray Serve replica
        # Publish safety: the last version of each task that loaded while it was current, and the current version
        # that would not load (served from last_good meanwhile; reported in stats()).
        self.last_good: dict[str, int] = {}
        self.load_failures: dict[str, dict[str, Any]] = {}

    @property
    def pointers(self) -> dict[str, int]:
        return self.pointer_cache.pointers

    # ------------------------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        await self.pointer_cache.start()
        await self.decoder.start()

    async def stop(self) -> None:
        await self.pointer_cache.stop()
        await self.batcher.close()
        self.decoder.close()

    def is_full(self) -> bool:
        """Whether a prediction now would be refused by the queue bound (the route asks before reading a body)."""
        return self.batcher.full

    # ------------------------------------------------------------------------------------------- freshness
    def _on_pointer_change(self, task: str, old: int | None, version: int | None) -> None:
        if version is None:  # deleted: nothing of the task is kept
            self.last_good.pop(task, None)
            self.load_failures.pop(task, None)
        # Drop stale versions unless a running batch pins them (dropped on a later check then) — but keep the last
        # version that loaded until the new one has: if the new one cannot load, requests are served from it.
        keep = {version, self.last_good.get(task)}
        for key in [k for k in self.bank.cache.keys() if k[0] == task and k[1] not in keep]:  # type: ignore[index]
            self.bank.evict(*key)  # type: ignore[misc]

    # -------------------------------------------------------------------------------------------- requests
    async def resolve(self, task: str, version: int | None) -> int:
        """The version a request runs on: the one asked for, else the cached pointer, else Redis."""
        return await self.pointer_cache.resolve(task, version)

    async def serve_version(self, task: str, version: int | None, *, pinned: bool | None = None) -> int:
        """Resolve and load the version a request runs on.

        A pinned version (``?version=N``) loads or fails. Otherwise ``version`` (or the cached pointer) is the
        current one, and if its artifact cannot be loaded here (another backbone, a broken file: the store accepted
        what this predictor refuses), the task keeps being served from the last version that loaded, and the
        failure is recorded (``stats()["load_failures"]``, ``/readyz``, ``vpetl_replica_fallbacks``) instead of
        every request answering 409.
        """
        pinned = version is not None if pinned is None else pinned
        resolved = await self.resolve(task, version)
        if pinned:
            await self.ensure_loaded(task, resolved)
            return resolved
        good = self.last_good.get(task)
        failure = self.load_failures.get(task)
        if failure is not None and failure["version"] == resolved and good is not None:
            await self.ensure_loaded(task, good)  # known bad: do not retry its load on every request
            return good
        try:
            await self.ensure_loaded(task, resolved)
        except (IncompatibleAdapter, InvalidAdapter) as e:
            if good is None or good == resolved:
                raise
            self.load_failures[task] = {"version": resolved, "error": f"[{e.code}] {e.message}", "serving": good}
            logger.warning("task %s: current version %d cannot be loaded (%s); serving version %d", task, resolved,
                           e.message, good)  # fmt: skip
            await self.ensure_loaded(task, good)
            return good
        if good != resolved:
            previous, self.last_good[task] = good, resolved
            self.load_failures.pop(task, None)
            if previous is not None and self.pointers.get(task) == resolved:
                self.bank.evict(task, previous)  # the new current version loaded: the fallback is not needed
        return resolved

    async def ensure_loaded(self, task: str, version: int) -> TaskAdapter:
        key = (task, version)
        adapter = self.bank.get(task, version)
        if adapter is not None:
            return adapter
        if key not in self._load_locks:
            # a version that does not exist fails here (UnknownVersion), before a lock is made for it: a client
            # cycling through ?version=N for unknown N cannot grow the lock table (one cheap read, cold loads only)
            await self.store.get_record(task, version)
        lock = self._load_locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                adapter = self.bank.get(task, version)
                if adapter is None:
                    started = time.perf_counter()
                    record, data = await self.store.get_bytes(task, version)
                    adapter = await asyncio.to_thread(self.bank.load, task, record.version, data)
                    if self.on_load is not None:
                        self.on_load(task, time.perf_counter() - started)
        finally:  # also when the load failed (a deleted version, a bad artifact): no lock outlives its load
            self._load_locks.pop(key, None)
        return adapter

    async def predict(self, clip: np.ndarray, task: str, version: int | None = None, topk: int = 5) -> Prediction:
        """Top-k labels for one preprocessed clip (C, T, H, W) under the task's adapter."""
        started = time.perf_counter()
        version = await self.resolve(task, version)
        adapter = await self.ensure_loaded(task, version)
        key = (task, version)
        self.bank.cache.pin([key])  # finish on the version we started with, even if a publish lands now
        try:
            (logits, model_s), waited = await self.batcher.submit(_Item(torch.from_numpy(clip), key))
        finally:
            self.bank.cache.unpin([key])
        probs = torch.softmax(logits.float(), dim=-1)
        k = max(1, min(topk, probs.shape[0]))
        scores, index = probs.topk(k)
        labels = adapter.labels
        return Prediction(
            replica=self.replica_id,
            task=task,
            version=version,
            adapter_sha256=adapter.sha256,
            predictions=[
                {"label": labels[i] if i < len(labels) else str(i), "index": int(i), "score": float(s)}
                for s, i in zip(scores.tolist(), index.tolist(), strict=True)
            ],
            timing_ms={
                "queue": round(waited * 1000, 3),
                "model": round(model_s * 1000, 3),
                "total": round((time.perf_counter() - started) * 1000, 3),
            },
        )

    async def predict_encoded(
        self, data: bytes, task: str, version: int | None = None, topk: int = 5, *, pinned: bool = True
    ) -> Prediction:
        """:meth:`predict` for an encoded clip: decoded in a decoder process, to the backbone's input spec.
        What the ingress hands a Ray replica: the clip as uploaded, never a float32 tensor."""
        started = time.perf_counter()
        if not pinned:  # the version the caller resolved is the current one: it may fall back (serve_version)
            version = await self.serve_version(task, version, pinned=False)
        clip = await self.decoder.decode(data, self.bank.backbone.input_spec)
        decode_ms = (time.perf_counter() - started) * 1000
        result = await self.predict(clip, task, version, topk)
        result.timing_ms["decode"] = round(decode_ms, 3)
        result.timing_ms["total"] = round((time.perf_counter() - started) * 1000, 3)
        return result

    async def validate_clip(self, data: bytes) -> None:
        """Check an uploaded training clip by decoding it as a prediction would: in a decoder process, under the
        same limits (never in this process, where one 8K clip is gigabytes of frames)."""
        await self.decoder.decode(data, self.bank.backbone.input_spec)

    async def validate_adapter(self, task: str, data: bytes) -> None:
        """Run the bank's full load checks on an upload (format, finiteness, method, shapes, backbone hash)
        without caching it."""
        await asyncio.to_thread(self.bank.decode, task, 0, data)

    async def replica_stats(self) -> list[dict[str, Any]]:
        """One entry: this process is the only predictor (the Ray ingress answers one per replica)."""
        return [self.stats()]

    def stats(self) -> dict[str, Any]:
        """This predictor's state for ``/readyz`` and ``/metrics`` (JSON-safe: it crosses Ray processes)."""
        cache = self.bank.cache
        return {
            "replica": self.replica_id,
            "node": self.node_id,
            "backbone_sha256": self.bank.backbone_sha256,
            "queue_depth": self.batcher.queue_depth,
            "batches": self.batcher.stats.batches,
            "clips": self.batcher.stats.items,
            "rejected": self.batcher.stats.rejected,
            "oom_splits": self.oom_splits,
            "decoders_replaced": self.decoder.replaced,
            "cache": {
                "hits": cache.stats.hits, "misses": cache.stats.misses, "loads": cache.stats.loads,
                "evictions": cache.stats.evictions, "entries": len(cache), "bytes": cache.resident_bytes,
                "budget_bytes": cache.budget_bytes,
            },
            "tasks": sorted({key[0] for key in cache.keys()}),  # type: ignore[index]
            "load_failures": dict(self.load_failures),
        }  # fmt: skip

    def _run_batch(self, items: list[_Item]) -> list[tuple[Any, float] | BaseException]:
        if self.batch_policy == "per-task":
            return self._run_per_task(items)
        return self._forward_or_split(items)

    def _forward(self, items: list[_Item]) -> list[tuple[Any, float] | BaseException]:
        started = time.perf_counter()
        clips = self.bank.stager.stack([item.clip for item in items])  # (B, C, T, H, W), pinned on CUDA
        results = self.bank.forward(clips, [item.key for item in items])
        elapsed = time.perf_counter() - started
        return [r if isinstance(r, VpetlError) else (r, elapsed) for r in results]

    def _forward_or_split(self, items: list[_Item]) -> list[tuple[Any, float] | BaseException]:
        """One forward; on out-of-memory, once more as two halves (activations scale with the batch), and what
        still does not fit fails with 503 ``overloaded`` — a transient capacity problem, not a server bug."""
        try:
            return self._forward(items)
        except OOM_ERRORS:
            _release_memory()
            if len(items) == 1:
                logger.warning("out of memory in a forward of one clip; answered overloaded")
                return [_oom_error()]
        self.oom_splits += 1
        half = len(items) // 2
        logger.warning("out of memory in a forward of %d clips; retrying as %d + %d", len(items), half,
                       len(items) - half)
        out: list[tuple[Any, float] | BaseException] = []
        for part in (items[:half], items[half:]):
            try:
                out.extend(self._forward(part))
            except OOM_ERRORS:
                _release_memory()
                out.extend([_oom_error()] * len(part))
        return out

    def _run_per_task(self, items: list[_Item]) -> list[tuple[Any, float] | BaseException]:
        """The baseline policy: one backbone forward per (task, version) group of the collected batch, one after
        another in order of first arrival. Each item's model time is its own group's forward."""
        groups: dict[Key, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(item.key, []).append(i)
        results: list[tuple[Any, float] | BaseException] = [RuntimeError("unset")] * len(items)
        for rows in groups.values():
            out = self._forward_or_split([items[i] for i in rows])  # b clips of one task
            for i, r in zip(rows, out, strict=True):
                results[i] = r
        return results


def _oom_error() -> Overloaded:
    return Overloaded("the model ran out of memory for this batch; retry shortly")


def _release_memory() -> None:
    """Return the failed forward's cached accelerator blocks before the retry (a no-op on CPU)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
