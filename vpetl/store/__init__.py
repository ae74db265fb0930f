"""Redis adapter store, embedded redis-server launcher, clip store (see DESIGN.md, "Adapter store (Redis)").

Key layout: :mod:`vpetl.store.keys`. The same store code runs against the embedded server and any external Redis.
"""

from __future__ import annotations

from vpetl.store.adapters import AdapterStore, AsyncAdapterStore, EventStream, async_redis_client, redis_client
from vpetl.store.clips import LABEL_RE, SPLITS, ClipRecord, ClipStore, StoredClip, is_valid_label
from vpetl.store.embedded import EmbeddedRedis, EmbeddedRedisError, RedisServerNotFound, find_redis_server
from vpetl.store.keys import EVENTS_CHANNEL
from vpetl.store.records import StoreError, TaskSummary, VersionRecord

__all__ = [
    "EVENTS_CHANNEL",
    "LABEL_RE",
    "SPLITS",
    "AdapterStore",
    "AsyncAdapterStore",
    "ClipRecord",
    "ClipStore",
    "EmbeddedRedis",
    "EmbeddedRedisError",
    "EventStream",
    "RedisServerNotFound",
    "StoreError",
    "StoredClip",
    "TaskSummary",
    "VersionRecord",
    "async_redis_client",
    "find_redis_server",
    "is_valid_label",
    "redis_client",
]
