"""The Ray Serve engine: a model-composition app of HTTP ingress replicas (the same FastAPI app, with no backbone)
in front of predictor replicas that each own the backbone, an AdapterBank and the mixed-task micro-batcher.

Data path: the ingress checks auth, limits and the task (from its own pointer cache: events + periodic check, so a
Redis outage does not stop predictions of cached tasks), reads the clip, and hands the replica the clip *as
uploaded* (bytes, never a float32 tensor) with the version it resolved; the replica decodes it in a worker thread
and joins the next mixed-task batch. ``@serve.batch`` is not used: it splits batches by multiplexed model id, so it
cannot form mixed-task batches (DESIGN.md). Ray's multiplexed model id (the task) only routes a task to a replica
that already holds its adapter (``ray_affinity``).

``build_app(args)`` is the application builder for ``serve run`` / ``serve deploy`` (deploy/serve_config.yaml) and
``vpetl serve --engine ray``. ``args`` are Settings fields; each replica builds its Settings from those *and its own
environment* (VPETL_DEVICE on a GPU pod applies), and secrets (``admin_token``) never travel in args: every replica
reads VPETL_ADMIN_TOKEN from its environment. Replicas load the deployment's backbone from the registry in Redis
(``vpetl.store.backbones``): nothing crosses nodes through a local path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from ray import serve
from ray.serve import Application

from server.pointers import PointerCache
from server.predictor import Prediction
from server.settings import Settings
from vpetl import errors as E
from vpetl.errors import VpetlError
from vpetl.store import AsyncAdapterStore

logger = logging.getLogger(__name__)

APP_NAME = "vpetl"
PREDICTOR = "VpetlPredictor"
INGRESS = "VpetlIngress"
SECRETS = frozenset({"admin_token"})
# Settings that only make sense in the process that resolves them: replicas get the backbone from the registry.
DRIVER_ONLY = frozenset({"checkpoint"})
REPLICA_STATS_KEY = "vpetl:{replicas}:stats"  # hash: replica id -> JSON stats with a timestamp
STATS_EVERY_S = 1.0
STATS_FRESH_S = 5.0
STATS_FORGET_S = 60.0
PREDICT_ATTEMPTS = 3  # a request whose replica died is retried on another (Serve replaces the dead one)

_ERRORS: dict[str, type[VpetlError]] = {
    cls.code: cls for cls in vars(E).values() if isinstance(cls, type) and issubclass(cls, VpetlError)
}


def _error_from(payload: dict[str, Any]) -> VpetlError:
    cls = _ERRORS.get(str(payload.get("code")), VpetlError)
    err = cls(str(payload.get("message", "")))
    err.code = str(payload.get("code", err.code))
    return err


def _replica_gone(e: BaseException) -> bool:
    """A failure of the replica process, not of the request: worth retrying on another replica."""
    from ray import exceptions as rx

    return isinstance(e, (rx.RayActorError, rx.ActorDiedError, rx.ActorUnavailableError, rx.WorkerCrashedError))


class RemotePredictor:
    """The ingress's engine: resolves versions from its own pointer cache, forwards encoded clips to replicas."""

    def __init__(self, store: AsyncAdapterStore, *, affinity: bool, pointer_check_s: float) -> None:
        self.store, self.affinity = store, affinity
        self.pointer_cache = PointerCache(store, pointer_check_s)
        self._handle: Any = None

    @property
    def handle(self) -> Any:
        if self._handle is None:
            self._handle = serve.get_deployment_handle(PREDICTOR, app_name=APP_NAME)
        return self._handle

    async def start(self) -> None:
        await self.pointer_cache.start()

    async def stop(self) -> None:
        await self.pointer_cache.stop()

    async def resolve(self, task: str, version: int | None) -> int:
        if version is not None:
            await self.store.get_record(task, version)  # UnknownTask / UnknownVersion before the body is read
            return version
        return await self.pointer_cache.resolve(task, None)

    async def ensure_loaded(self, task: str, version: int) -> None:
        return None  # the replica that gets the request loads it (per-key lock there)

    async def serve_version(self, task: str, version: int | None) -> int:
        """The version to ask a replica for; the replica loads it (and falls back if the current one fails)."""
        return await self.resolve(task, version)

    async def _call(self, method: str, *args: Any, task: str | None = None) -> Any:
        handle = self.handle.options(multiplexed_model_id=task) if (self.affinity and task) else self.handle
        for attempt in range(1, PREDICT_ATTEMPTS + 1):
            try:
                return await getattr(handle, method).remote(*args)
            except Exception as e:
                if not _replica_gone(e) or attempt == PREDICT_ATTEMPTS:
                    raise
                logger.warning("predictor replica died during %s (%s); retrying on another", method, type(e).__name__)
                await asyncio.sleep(0.2 * attempt)
        raise AssertionError("unreachable")

    async def predict_encoded(
        self, data: bytes, task: str, version: int | None, topk: int = 5, *, pinned: bool = True
    ) -> Prediction:
        out = await self._call("predict", data, task, version, topk, pinned, task=task)
        if "error" in out:
            raise _error_from(out["error"])
        return Prediction(**out)

    async def _check(self, method: str, *args: Any) -> None:
        """A replica-side validation: None when it passed, else the typed error it reported."""
        out = await self._call(method, *args)
        if out is not None:
            raise _error_from(out["error"])

    async def validate_clip(self, data: bytes) -> None:
        await self._check("validate_clip", data)  # decoded in a replica's decoder pool, never in the ingress

    async def validate_adapter(self, task: str, data: bytes) -> None:
        await self._check("validate_adapter", task, data)

    async def replica_stats(self) -> list[dict[str, Any]]:
        """Every live replica's last heartbeat (replicas write them to Redis; the ingress cannot address one
        replica through a deployment handle)."""
        raw = await self.store.redis.hgetall(REPLICA_STATS_KEY)
        now, out, gone = time.time(), [], []
        for field, value in raw.items():
            stats = json.loads(value)
            age = now - float(stats.get("ts", 0))
            if age <= STATS_FRESH_S:
                out.append(stats)
            elif age > STATS_FORGET_S:
                gone.append(field)
        if gone:  # replicas replaced long ago (scale-down, crashes): the hash does not grow with churn
            await self.store.redis.hdel(REPLICA_STATS_KEY, *gone)
        return sorted(out, key=lambda s: str(s.get("replica")))


def _replica_settings(payload: dict[str, Any]) -> Settings:
    """A replica's settings: the app's args over this process's own environment (device, secrets, addresses)."""
    return Settings(**payload)


@serve.deployment(name=PREDICTOR, max_ongoing_requests=256)
class PredictorDeployment:
    """One replica: the registered backbone + AdapterBank + micro-batcher, adapters from the shared Redis."""

    def __init__(self, payload: dict[str, Any]) -> None:
        import ray

        from server.services import create_services

        # Resolving the backbone from the registry waits up to backbone_wait_s, then raises with the reason:
        # Serve logs it and retries the replica, so a missing or mismatched backbone never serves.
        self.services = create_services(_replica_settings(payload))
        predictor = self.services.predictor
        predictor.replica_id = serve.get_replica_context().replica_id.unique_id
        predictor.node_id = ray.get_runtime_context().get_node_id()
        self._started = False
        self._heartbeat: asyncio.Task[None] | None = None

    async def _ensure_started(self) -> None:
        if not self._started:
            self._started = True
            await self.services.start()
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat(), name="vpetl-replica-stats")

    async def _beat(self) -> None:
        predictor, redis = self.services.predictor, self.services.store.redis
        while True:
            try:
                stats = {**predictor.stats(), "ts": time.time()}
                await redis.hset(REPLICA_STATS_KEY, predictor.replica_id, json.dumps(stats))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis away: the next beat retries; predictions do not depend on this
                logger.debug("replica stats not written: %s", e)
            await asyncio.sleep(STATS_EVERY_S)

    @serve.multiplexed(max_num_models_per_replica=1024)
    async def get_model(self, task: str) -> str:
        # Only the affinity key: Ray reports which tasks this replica serves. Adapters live in the bank's own
        # byte-budget cache (all versions, mixed batches), not in Serve's per-model LRU.
        return task

    async def predict(
        self, data: bytes, task: str, version: int | None, topk: int, pinned: bool = True
    ) -> dict[str, Any]:
        await self._ensure_started()
        if serve.get_multiplexed_model_id():
            await self.get_model(task)
        try:
            return (await self.services.predictor.predict_encoded(data, task, version, topk, pinned=pinned)).to_dict()
        except VpetlError as e:  # errors cross the process boundary as data, re-raised typed by the ingress
            return {"error": {"code": e.code, "message": e.message}}

    async def validate_clip(self, data: bytes) -> dict[str, Any] | None:
        await self._ensure_started()
        try:
            await self.services.predictor.validate_clip(data)
        except VpetlError as e:
            return {"error": {"code": e.code, "message": e.message}}
        return None

    async def validate_adapter(self, task: str, data: bytes) -> dict[str, Any] | None:
        await self._ensure_started()
        try:
            await self.services.predictor.validate_adapter(task, data)
        except VpetlError as e:
            return {"error": {"code": e.code, "message": e.message}}
        return None

    async def check_health(self) -> None:
        await self._ensure_started()
        bank, identity = self.services.bank, self.services.identity
        if bank is None or bank.backbone_sha256 != identity.sha256:
            raise RuntimeError(f"replica does not hold the registered backbone {identity.sha256[:12]}")

    def __del__(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()


def _ingress_app(payload: dict[str, Any]) -> Any:
    """Runs inside each ingress replica: the full app with no backbone, forwarding to the predictor deployment."""
    from server.app import build_app as build_fastapi
    from server.services import create_services

    settings = _replica_settings(payload)
    settings.check_bind()  # this replica's own environment must hold the token a non-loopback bind needs
    services = create_services(settings, with_backbone=False)
    services.predictor = RemotePredictor(
        services.store, affinity=settings.ray_affinity, pointer_check_s=settings.pointer_check_s
    )
    return build_fastapi(services)


def predictor_options(settings: Settings) -> dict[str, Any]:
    """Resources and scaling of the predictor deployment, from Settings."""
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": settings.predictor_num_cpus, "num_gpus": settings.predictor_num_gpus},
        # Above the batch size, or Serve holds back requests a batch could take (ENVIRONMENT.md).
        "max_ongoing_requests": max(4 * settings.max_batch_size, settings.max_queue),
    }
    if settings.max_replicas is not None:
        low = settings.min_replicas if settings.min_replicas is not None else 1
        options["autoscaling_config"] = {
            "min_replicas": low,
            "initial_replicas": min(max(settings.replicas, low), settings.max_replicas),
            "max_replicas": settings.max_replicas,
            "target_ongoing_requests": settings.target_ongoing_requests,
            "upscale_delay_s": settings.upscale_delay_s,
            "downscale_delay_s": settings.downscale_delay_s,
        }
    else:
        options["num_replicas"] = settings.replicas
    return options


def replica_payload(settings: Settings, keys: set[str]) -> dict[str, Any]:
    """What travels to the replicas (stored by Ray's GCS): the settings named in the app's args (validated),
    minus secrets and driver-local paths. Not the builder's environment: everything else each replica takes from
    its own (``model_fields_set`` would include the builder's VPETL_* variables and freeze them)."""
    return settings.model_dump(mode="json", include=keys - SECRETS - DRIVER_ONLY)


def replica_args(settings: Settings) -> dict[str, Any]:
    """``build_app`` args for settings resolved by a driver (``vpetl serve --engine ray``): what its flags and its
    own VPETL_* environment set, no secrets."""
    return settings.model_dump(mode="json", include=settings.model_fields_set - SECRETS)


def build_app(args: dict[str, Any]) -> Application:
    """Application builder (``serve run server.ray_app:build_app redis_url=…``, deploy/serve_config.yaml)."""
    bad = sorted(set(args) & SECRETS)
    if bad:
        raise E.InvalidRequest(
            f"{', '.join(bad)} must not be in the app's args (Ray stores them): set VPETL_ADMIN_TOKEN in the "
            "environment of every Ray node instead"
        )
    unknown = sorted(set(args) - set(Settings.model_fields))
    if unknown:  # Settings ignores unknown keys (the environment has many); a typo in a config file must not
        raise E.InvalidRequest(f"unknown setting(s) in the app's args: {', '.join(unknown)}")
    settings = Settings(**args)
    if not settings.redis_url:
        raise E.InvalidRequest("the Ray engine needs a shared Redis: set redis_url (or VPETL_REDIS_URL)")
    settings.check_bind()
    if settings.checkpoint is not None:  # a checkpoint readable here: register it once for every replica
        _register_checkpoint(settings)
    payload = replica_payload(settings, set(args))
    predictor = PredictorDeployment.options(**predictor_options(settings)).bind(payload)

    def build_ingress() -> Any:  # a plain function: Ray treats it as an app builder, run inside the replica
        return _ingress_app(payload)

    ingress_cls = serve.deployment(
        serve.ingress(build_ingress)(), name=INGRESS,
        ray_actor_options={"num_cpus": settings.ingress_num_cpus}, max_ongoing_requests=512,
    )  # fmt: skip
    return ingress_cls.options(num_replicas=settings.ingress_replicas).bind(predictor)


def _register_checkpoint(settings: Settings) -> None:
    from vpetl.backbones.identity import resolve_backbone
    from vpetl.store.adapters import redis_client
    from vpetl.store.backbones import BackboneRegistry

    client = redis_client(str(settings.redis_url))
    try:
        registry = BackboneRegistry(client)
        resolve_backbone(settings.backbone, settings.checkpoint, registry, settings.data_dir / "backbones")
    finally:
        client.close()
