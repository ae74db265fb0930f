"""Everything the app serves with, built once from :class:`~server.settings.Settings` and passed to ``build_app``.

No module-level state: the CLI (the composition root) calls :func:`create_services`, hands the result to
``build_app`` and closes it on exit; tests do the same with their own settings. Resources come in two kinds:

- loop-bound (the asyncio Redis client, the predictor's background tasks): started and stopped by the app's
  lifespan (:meth:`Services.start` / :meth:`Services.stop`), inside the event loop that uses them;
- process-bound (the embedded redis-server, the blocking clip-store client): released by :meth:`Services.close`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import redis
import torch

from server.decode_pool import DecodePool
from server.metrics import Metrics
from server.predictor import Prediction, Predictor
from server.settings import Settings
from vpetl.backbones.base import Backbone
from vpetl.backbones.identity import resolve_backbone
from vpetl.errors import VpetlError
from vpetl.petl.bank import AdapterBank
from vpetl.store import AsyncAdapterStore, ClipStore, EmbeddedRedis
from vpetl.store.adapters import redis_client
from vpetl.store.backbones import BackboneNotRegistered, BackboneRecord, BackboneRegistry, describe
from vpetl.store.clients import ping_url
from vpetl.store.jobs import JobQueue

logger = logging.getLogger(__name__)

REDIS_WAIT_S = 15.0  # bounded wait for an external Redis at start-up (compose starts services together)


class Engine(Protocol):
    """What the routes call to predict: the local :class:`~server.predictor.Predictor`, or the Ray ingress's
    forwarder to predictor replicas (``server.ray_app.RemotePredictor``)."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def resolve(self, task: str, version: int | None) -> int: ...
    async def ensure_loaded(self, task: str, version: int) -> object: ...
    async def serve_version(self, task: str, version: int | None) -> int: ...
    async def predict_encoded(
        self, data: bytes, task: str, version: int | None, topk: int, *, pinned: bool = True
    ) -> Prediction: ...
    async def validate_clip(self, data: bytes) -> None: ...
    async def validate_adapter(self, task: str, data: bytes) -> None: ...
    async def replica_stats(self) -> list[dict[str, Any]]: ...


class RedisUnavailable(VpetlError):
    code = "redis_unavailable"
    http_status = 503


@dataclass
class Services:
    """The app's collaborators. ``embedded_redis`` is set when the services started their own redis-server."""

    settings: Settings
    redis_url: str
    identity: BackboneRecord  # the deployment's registered backbone (name, sha256, input spec)
    backbone: Backbone | None  # None in a Ray Serve ingress: the backbone lives in the predictor replicas
    bank: AdapterBank | None
    store: AsyncAdapterStore
    clips: ClipStore
    predictor: Engine
    metrics: Metrics
    jobs: JobQueue
    embedded_redis: EmbeddedRedis | None = None
    fp32_backbone: Backbone | None = None  # built for the ONNX export when the served one is not fp32

    def require_backbone(self) -> Backbone:
        """The backbone module in float32 (what the ONNX export needs): the served one when it is fp32, else one
        built from the registry on first use — where this process has none (a Ray ingress) or serves it in
        bf16/fp16 (casting back would export rounded weights). Blocking: call from a worker thread."""
        served = self.backbone
        if served is not None and all(p.dtype == torch.float32 for p in served.parameters()):
            return served
        if self.fp32_backbone is None:
            self.fp32_backbone, _ = resolve_backbone(
                self.identity.name, None, BackboneRegistry(self.jobs.redis), self.settings.data_dir / "backbones",
                register=False,
            )  # fmt: skip
        return self.fp32_backbone

    async def start(self) -> None:
        """Start the loop-bound parts (the predictor's event listener and pointer check)."""
        await self.predictor.start()

    async def stop(self) -> None:
        """Stop the loop-bound parts. The store's connections are dropped (they belong to this loop); the store
        reconnects lazily if the services are started again in another loop (tests)."""
        await self.predictor.stop()
        await self.store.redis.connection_pool.disconnect()

    def close(self) -> None:
        """Release the process-bound parts: the shared blocking Redis client and the embedded redis-server."""
        self.clips.close()
        self.jobs.redis.close()
        if self.embedded_redis is not None:
            self.embedded_redis.stop()
            self.embedded_redis = None

    async def aclose(self) -> None:
        """:meth:`stop` then :meth:`close`."""
        await self.stop()
        await asyncio.to_thread(self.close)


def redact_url(url: str) -> str:
    """A Redis URL for logs and messages: the password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def wait_for_redis(url: str, timeout: float = REDIS_WAIT_S) -> None:
    """Block until Redis at ``url`` answers PING, at most ``timeout`` seconds (then RedisUnavailable)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ping_url(url, timeout_s=1.0)  # a cluster URL pings every master
            return
        except (redis.RedisError, OSError) as e:
            if time.monotonic() >= deadline:
                raise RedisUnavailable(
                    f"cannot reach Redis at {redact_url(url)} after {timeout:g} s ({e}); start it, fix "
                    "--redis-url / VPETL_REDIS_URL, or leave it unset for an embedded redis-server"
                ) from e
        time.sleep(0.2)


def create_services(settings: Settings, *, with_backbone: bool = True) -> Services:
    """Build every service (blocking: starts Redis if embedded, resolves the deployment's backbone). Call
    ``close()`` when done. ``with_backbone=False`` (a Ray Serve ingress): no backbone, bank or predictor — the
    caller sets ``predictor`` to one that forwards to the replicas; the identity comes from the registry."""
    torch.set_num_threads(settings.torch_threads)
    embedded: EmbeddedRedis | None = None
    url = settings.redis_url
    if url is None:
        embedded = EmbeddedRedis(settings.data_dir / "redis").start()
        url = embedded.url
        logger.info("embedded redis-server at %s", url)
    try:
        wait_for_redis(url)
        client = redis_client(url)
        registry = BackboneRegistry(client)
        backbone: Backbone | None = None
        bank: AdapterBank | None = None
        if with_backbone:
            backbone, identity = resolve_backbone(
                settings.backbone, settings.checkpoint, registry, settings.data_dir / "backbones",
                wait_s=settings.backbone_wait_s,
            )  # fmt: skip
            backbone = backbone.to(settings.device)
            # the bank hashes the backbone (fp32 identity) before casting it to the serving dtype
            bank = AdapterBank(
                backbone, budget_bytes=int(settings.cache_mb * 1024 * 1024), dtype=settings.dtype,
                data_path=settings.data_path(),
            )  # fmt: skip
        else:
            found = registry.wait(settings.backbone_wait_s)
            if found is None:
                raise BackboneNotRegistered(
                    "no backbone is registered in Redis yet: start a predictor, `vpetl worker` or "
                    "`vpetl backbone register` against the same Redis"
                )
            identity = found
        metrics = Metrics()
        store = AsyncAdapterStore(url, keep_versions=settings.keep_versions)
        clips = ClipStore(
            settings.data_dir, client, max_bytes=settings.max_upload_bytes, store_url=settings.clip_store
        )
        jobs = JobQueue(client)
        predictor: Engine | None = None
        if bank is not None:
            local = Predictor(
                bank,
                store,
                max_batch_size=settings.max_batch_size,
                max_wait_ms=settings.max_wait_ms,
                max_queue=settings.max_queue,
                pointer_check_s=settings.pointer_check_s,
                batch_policy=settings.batch_policy,
                decoder=DecodePool.from_settings(settings),
                on_batch=metrics.on_batch,
                on_load=metrics.on_load,
            )
            metrics.bind(local, bank)
            predictor = local
    except BaseException:
        if embedded is not None:
            embedded.stop()
        raise
    logger.info("services ready: backbone %s, redis %s", describe(identity), redact_url(url))
    return Services(
        settings=settings,
        redis_url=url,
        identity=identity,
        backbone=backbone,
        bank=bank,
        store=store,
        clips=clips,
        predictor=predictor,  # type: ignore[arg-type]  # set by the Ray ingress when with_backbone is False
        metrics=metrics,
        jobs=jobs,
        embedded_redis=embedded,
    )


async def build_services(settings: Settings) -> Services:
    """:func:`create_services` from async code (the blocking work runs in a thread)."""
    return await asyncio.to_thread(create_services, settings)
