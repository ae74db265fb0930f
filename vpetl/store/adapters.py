"""Versioned adapter store on Redis: :class:`AdapterStore` (blocking) and :class:`AsyncAdapterStore` (asyncio).

Both run the same operations from ``_ops`` (key layout in ``keys``, Lua in ``_scripts``, records in ``records``);
they differ only in whether a Redis call blocks or is awaited. Guarantees:

- a version's bytes never change: blobs are content-addressed within the task (``vpetl:{<task>}:blobs``, field
  sha256, written once) and a version record is written once; publishing the same bytes again makes a new version
  with the same sha256;
- publish is one atomic script that stores the bytes, allocates ``latest + 1``, writes the record and moves the
  ``current`` pointer last, so a reader never sees a pointer whose record or bytes are missing;
- every publish / rollback / delete PUBLISHes ``{"event", "task", "version", "sha256"}`` on ``vpetl:events`` from
  inside that script (subscribers hear of a change only once it is visible). Pub/sub is at-most-once: servers also
  re-check pointers with :meth:`AdapterStore.get_pointers`;
- version numbers are never reused, even after a delete, so ``(task, version)`` names one artifact forever.

All of one task's keys share a hash tag, so each operation on a task is one script on one slot and the same code
runs on a standalone Redis and on Redis Cluster (URL schemes in ``vpetl.store.clients``; layout in ``keys``).
A client built from a URL retries connection errors with a short backoff, so the store survives a Redis restart.
A retried publish whose first attempt did run on the server makes one extra version (same bytes): harmless —
and a publish that names its training ``job_id`` is idempotent: the job's version is recorded in the task's slot
(``vpetl:{<task>}:jobs``) by the publish script itself, and a second publish for that job returns it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import redis
import redis.asyncio
import redis.asyncio.cluster

from vpetl.store import _ops
from vpetl.store import keys as k
from vpetl.store._ops import Batch, Op, Request, Script, redis_args
from vpetl.store._scripts import ADAPTER_SCRIPTS
from vpetl.store.clients import AsyncClient, SyncClient, async_redis_client, is_binary, redis_client
from vpetl.store.records import TaskPage, TaskSummary, VersionRecord, parse_event

__all__ = [
    "DEFAULT_KEEP_VERSIONS", "AdapterStore", "AsyncAdapterStore", "EventStream", "async_redis_client", "redis_client"
]  # fmt: skip

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Retention: versions kept per task (the newest ones; the current version is always among them). 0 keeps all.
DEFAULT_KEEP_VERSIONS = 10


def _check_binary(client: SyncClient | AsyncClient) -> None:
    if not is_binary(client):
        raise ValueError("the adapter store needs a Redis client with decode_responses=False (blobs are bytes)")


class AdapterStore:
    """Blocking adapter store (training worker, CLI, tests; the server uses :class:`AsyncAdapterStore`).

    Args:
        client: a Redis URL (the store then owns and closes its client; see ``vpetl.store.clients`` for the
            schemes, Redis Cluster included) or a ``redis.Redis`` / ``redis.cluster.RedisCluster`` to share.
        keep_versions: retention applied by every publish, in its own script: the newest ``keep_versions``
            versions stay (the one just published, which is current, is always kept; there is no pin); older
            records and the blobs only they used are removed. ``0`` keeps every version.
    """

    def __init__(self, client: str | SyncClient, *, keep_versions: int = DEFAULT_KEEP_VERSIONS) -> None:
        if isinstance(keep_versions, bool) or not isinstance(keep_versions, int) or keep_versions < 0:
            raise ValueError(f"keep_versions must be an integer >= 0 (0 = keep all), not {keep_versions!r}")
        self.keep_versions = keep_versions
        self._owns_client = isinstance(client, str)
        self.redis: SyncClient = redis_client(client) if isinstance(client, str) else client
        _check_binary(self.redis)
        self._scripts = {name: self.redis.register_script(src) for name, src in ADAPTER_SCRIPTS.items()}

    def _execute(self, request: Request) -> Any:
        if isinstance(request, Script):
            return self._scripts[request.name](keys=request.keys, args=request.args)
        if isinstance(request, Batch):
            pipe = self.redis.pipeline(transaction=False)
            for item in request.requests:
                pipe.execute_command(*redis_args(item))
            return pipe.execute()
        return self.redis.execute_command(*request.args)

    def _run(self, op: Op[T]) -> T:
        reply: Any = None
        try:
            while True:
                reply = self._execute(op.send(reply))
        except StopIteration as done:
            return done.value

    def publish(
        self, task: str, data: bytes, meta: Mapping[str, Any] | None = None, *, job_id: str | None = None
    ) -> VersionRecord:
        """Store ``data`` as the task's next version and make it current.

        Args:
            task: the task name (validated; :class:`~vpetl.errors.InvalidRequest` otherwise).
            data: the artifact bytes (the store does not parse them; callers validate first).
            meta: JSON-able metadata stored as-is in the record (method, trainable_params, num_classes, metrics,
                backbone, backbone_sha256, labels, …); ``version``, ``task``, ``sha256``, ``size`` and
                ``created_at`` are the store's and override same-named keys.
            job_id: the training job publishing (hex id): if that job already published a version of this task,
                its record is returned and nothing is written (a retried or taken-over job publishes once).
        """
        return self._run(_ops.publish(task, data, meta or {}, job_id, self.keep_versions))

    def job_version(self, task: str, job_id: str) -> int | None:
        """The version training job ``job_id`` published to ``task``, or ``None``."""
        return self._run(_ops.job_version(task, job_id))

    def get_pointer(self, task: str) -> int | None:
        """The task's current version, or ``None`` if the task does not exist."""
        return self._run(_ops.get_pointers([task]))[task]

    def get_pointers(self, tasks: Iterable[str]) -> dict[str, int | None]:
        """Current versions of many tasks in one round trip (the server's periodic re-check)."""
        return self._run(_ops.get_pointers(tasks))

    def get_record(self, task: str, version: int | None = None) -> VersionRecord:
        """The record of ``version`` (default: current). Raises UnknownTask / UnknownVersion."""
        return self._run(_ops.get(task, version, with_blob=False))[0]

    def get_bytes(self, task: str, version: int | None = None) -> tuple[VersionRecord, bytes]:
        """Record and artifact bytes of ``version`` (default: current), read atomically together."""
        record, blob = self._run(_ops.get(task, version, with_blob=True))
        assert blob is not None  # the script returns the blob or an error status
        return record, blob

    def get_blob(self, task: str, sha256: str) -> bytes | None:
        """Artifact bytes by sha256 among the task's versions, or ``None`` if none of them has these bytes."""
        return self._run(_ops.get_blob(task, sha256))

    def list_tasks(self) -> list[TaskSummary]:
        """Every task with its current version record, sorted by name."""
        return self._run(_ops.list_tasks())

    def history(self, task: str) -> list[VersionRecord]:
        """All versions of a task, oldest first. Raises UnknownTask."""
        return self._run(_ops.history(task))

    def detail(self, task: str) -> tuple[TaskSummary, list[VersionRecord]]:
        """The task's summary and its history, in one atomic script call. Raises UnknownTask."""
        return self._run(_ops.detail(task))

    def list_page(
        self, cursor: str | None = None, limit: int = 100, prefix: str = "", method: str | None = None
    ) -> TaskPage:
        """A page of tasks in name order (see ``_ops.list_page``): O(log N + limit), whatever N."""
        return self._run(_ops.list_page(cursor, limit, prefix, method))

    def rollback(self, task: str, version: int) -> VersionRecord:
        """Make an existing version current (atomically; event ``rollback``). Returns its record."""
        return self._run(_ops.rollback(task, version))

    def delete(self, task: str) -> dict[str, int]:
        """Remove the task, its versions and their bytes (event ``delete``).

        Returns ``{"versions": removed, "blobs_freed": n}``. Raises UnknownTask.
        """
        return self._run(_ops.delete(task))

    def ping(self) -> bool:
        """Whether Redis answers (readiness)."""
        try:
            return bool(self.redis.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        """Close the client if the store created it."""
        if self._owns_client:
            self.redis.close()

    def __enter__(self) -> AdapterStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncAdapterStore:
    """The asyncio adapter store: the same methods as :class:`AdapterStore`, awaitable, plus
    :meth:`subscribe_events`.

    Args:
        client: a Redis URL (the store then owns and closes its client) or a ``redis.asyncio.Redis`` /
            ``redis.asyncio.cluster.RedisCluster`` to share.
        keep_versions: see :class:`AdapterStore`.
    """

    def __init__(self, client: str | AsyncClient, *, keep_versions: int = DEFAULT_KEEP_VERSIONS) -> None:
        if isinstance(keep_versions, bool) or not isinstance(keep_versions, int) or keep_versions < 0:
            raise ValueError(f"keep_versions must be an integer >= 0 (0 = keep all), not {keep_versions!r}")
        self.keep_versions = keep_versions
        self._owns_client = isinstance(client, str)
        self.redis: AsyncClient = async_redis_client(client) if isinstance(client, str) else client
        _check_binary(self.redis)
        self._scripts = {name: self.redis.register_script(src) for name, src in ADAPTER_SCRIPTS.items()}

    async def _execute(self, request: Request) -> Any:
        if isinstance(request, Script):
            return await self._scripts[request.name](keys=request.keys, args=request.args)
        if isinstance(request, Batch):
            pipe = self.redis.pipeline(transaction=False)
            for item in request.requests:
                pipe.execute_command(*redis_args(item))
            return await pipe.execute()
        return await self.redis.execute_command(*request.args)

    async def _run(self, op: Op[T]) -> T:
        reply: Any = None
        try:
            while True:
                reply = await self._execute(op.send(reply))
        except StopIteration as done:
            return done.value

    async def publish(
        self, task: str, data: bytes, meta: Mapping[str, Any] | None = None, *, job_id: str | None = None
    ) -> VersionRecord:
        """See :meth:`AdapterStore.publish`."""
        return await self._run(_ops.publish(task, data, meta or {}, job_id, self.keep_versions))

    async def job_version(self, task: str, job_id: str) -> int | None:
        """See :meth:`AdapterStore.job_version`."""
        return await self._run(_ops.job_version(task, job_id))

    async def get_pointer(self, task: str) -> int | None:
        """See :meth:`AdapterStore.get_pointer`."""
        return (await self._run(_ops.get_pointers([task])))[task]

    async def get_pointers(self, tasks: Iterable[str]) -> dict[str, int | None]:
        """See :meth:`AdapterStore.get_pointers`."""
        return await self._run(_ops.get_pointers(tasks))

    async def get_record(self, task: str, version: int | None = None) -> VersionRecord:
        """See :meth:`AdapterStore.get_record`."""
        return (await self._run(_ops.get(task, version, with_blob=False)))[0]

    async def get_bytes(self, task: str, version: int | None = None) -> tuple[VersionRecord, bytes]:
        """See :meth:`AdapterStore.get_bytes`."""
        record, blob = await self._run(_ops.get(task, version, with_blob=True))
        assert blob is not None
        return record, blob

    async def get_blob(self, task: str, sha256: str) -> bytes | None:
        """See :meth:`AdapterStore.get_blob`."""
        return await self._run(_ops.get_blob(task, sha256))

    async def list_tasks(self) -> list[TaskSummary]:
        """See :meth:`AdapterStore.list_tasks`."""
        return await self._run(_ops.list_tasks())

    async def history(self, task: str) -> list[VersionRecord]:
        """See :meth:`AdapterStore.history`."""
        return await self._run(_ops.history(task))

    async def detail(self, task: str) -> tuple[TaskSummary, list[VersionRecord]]:
        """See :meth:`AdapterStore.detail`."""
        return await self._run(_ops.detail(task))

    async def list_page(
        self, cursor: str | None = None, limit: int = 100, prefix: str = "", method: str | None = None
    ) -> TaskPage:
        """See :meth:`AdapterStore.list_page`."""
        return await self._run(_ops.list_page(cursor, limit, prefix, method))

    async def rollback(self, task: str, version: int) -> VersionRecord:
        """See :meth:`AdapterStore.rollback`."""
        return await self._run(_ops.rollback(task, version))

    async def delete(self, task: str) -> dict[str, int]:
        """See :meth:`AdapterStore.delete`."""
        return await self._run(_ops.delete(task))

    async def ping(self) -> bool:
        """See :meth:`AdapterStore.ping`."""
        try:
            return bool(await self.redis.ping())
        except redis.RedisError:
            return False

    def subscribe_events(self) -> EventStream:
        """Adapter events as dicts ``{"event": "publish"|"rollback"|"delete", "task", "version", "sha256"}``
        (for ``delete``, the version that was current).

        Use as ``async with store.subscribe_events() as events: async for event in events: ...``; the
        subscription is active once ``__aenter__`` returns, so nothing published after that is missed (unless
        the connection drops: pub/sub is at-most-once). Plain ``async for`` also works: it subscribes on the
        first iteration, and the caller should ``await events.aclose()`` at the end.
        """
        return EventStream(self.redis)

    async def aclose(self) -> None:
        """Close the client if the store created it."""
        if self._owns_client:
            await self.redis.aclose()

    async def __aenter__(self) -> AsyncAdapterStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class EventStream:
    """A subscription to ``vpetl:events`` yielding event dicts (see :meth:`AsyncAdapterStore.subscribe_events`)."""

    def __init__(self, client: AsyncClient) -> None:
        # On a cluster this is redis-py's ClusterPubSub on one node: a classic PUBLISH reaches every node of the
        # cluster, so any node hears every event.
        self._client = client
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._subscribed = False

    async def subscribe(self) -> None:
        """Start listening (idempotent); events published before this are not delivered."""
        if not self._subscribed:
            if isinstance(self._client, redis.asyncio.cluster.RedisCluster):
                # the async ClusterPubSub picks its node from the slot map, which a fresh client has not loaded yet
                await self._client.initialize()
            await self._pubsub.subscribe(k.EVENTS_CHANNEL)
            self._subscribed = True

    async def __aenter__(self) -> EventStream:
        await self.subscribe()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Unsubscribe and release the connection."""
        await self._pubsub.aclose()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        event = await self.get(timeout=None)
        assert event is not None  # get() without a timeout only returns with an event
        return event

    async def get(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next event, or ``None`` after ``timeout`` seconds (``None``: wait for one)."""
        await self.subscribe()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=remaining)
            if message is not None and message.get("type") == "message":
                event = parse_event(message["data"])
                if event is not None:
                    return event
                logger.warning("ignoring a malformed message on %s: %.200r", k.EVENTS_CHANNEL, message["data"])
            if deadline is not None and loop.time() >= deadline:
                return None
