"""The Ray Serve engine: the same FastAPI app as the local engine, as an ingress deployment, in front of predictor
replicas that each run the mixed-task micro-batcher over their own AdapterBank.

Why not ``@serve.batch``: it splits every batch by multiplexed model id, so it cannot form mixed-task batches
(DESIGN.md). Each replica batches across tasks itself; Ray's multiplexed model id (the task) is used only for
replica affinity — routing a task to a replica that already holds its adapter — and can be turned off
(``VPETL_RAY_AFFINITY=0``) to measure whether it helps.

``build_app(args)`` is the application builder for ``serve run`` / ``serve deploy`` (deploy/serve_config.yaml):
``args`` are Settings fields (``redis_url`` is required: replicas must share one Redis).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
from ray import serve
from ray.serve import Application

from server.predictor import Prediction
from server.settings import Settings
from vpetl import errors as E
from vpetl.errors import VpetlError
from vpetl.store import AsyncAdapterStore

logger = logging.getLogger(__name__)

APP_NAME = "vpetl"
PREDICTOR = "VpetlPredictor"
_ERRORS: dict[str, type[VpetlError]] = {
    cls.code: cls for cls in vars(E).values() if isinstance(cls, type) and issubclass(cls, VpetlError)
}


def _error_from(payload: dict[str, Any]) -> VpetlError:
    cls = _ERRORS.get(str(payload.get("code")), VpetlError)
    err = cls(str(payload.get("message", "")))
    err.code = str(payload.get("code", err.code))
    return err


class RemotePredictor:
    """What the routes call (``resolve`` / ``ensure_loaded`` / ``predict``), forwarded to predictor replicas."""

    def __init__(self, store: AsyncAdapterStore, affinity: bool) -> None:
        self.store, self.affinity = store, affinity
        self._handle: Any = None
        self.batcher = None  # queue depth lives in the replicas

    @property
    def handle(self) -> Any:
        if self._handle is None:
            self._handle = serve.get_deployment_handle(PREDICTOR, app_name=APP_NAME)
        return self._handle

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def resolve(self, task: str, version: int | None) -> int:
        if version is not None:
            await self.store.get_record(task, version)  # UnknownTask / UnknownVersion before the body is read
            return version
        current = await self.store.get_pointer(task)
        if current is None:
            raise E.UnknownTask(f"no adapter is published for task {task!r}")
        return current

    async def ensure_loaded(self, task: str, version: int) -> None:
        return None  # the replica that gets the request loads it (per-key lock there)

    async def predict(self, clip: np.ndarray, task: str, version: int | None, topk: int = 5) -> Prediction:
        handle = self.handle.options(multiplexed_model_id=task) if self.affinity else self.handle
        out = await handle.predict.remote(clip, task, version, topk)
        if "error" in out:
            raise _error_from(out["error"])
        return Prediction(**out)


@serve.deployment(name=PREDICTOR, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
class PredictorDeployment:
    """One replica: its own backbone + AdapterBank + micro-batcher, adapters from the shared Redis."""

    def __init__(self, settings: dict[str, Any]) -> None:
        from server.services import create_services

        self.services = create_services(Settings(**settings))
        self._started = False

    async def _ensure_started(self) -> None:
        if not self._started:
            await self.services.start()
            self._started = True

    @serve.multiplexed(max_num_models_per_replica=1024)
    async def get_model(self, task: str) -> str:
        # Only the affinity key: Ray reports which tasks this replica serves. Adapters live in the bank's own
        # byte-budget cache (all versions, mixed batches), not in Serve's per-model LRU.
        return task

    async def predict(self, clip: np.ndarray, task: str, version: int | None, topk: int) -> dict[str, Any]:
        await self._ensure_started()
        if serve.get_multiplexed_model_id():
            await self.get_model(task)
        try:
            return (await self.services.predictor.predict(clip, task, version, topk)).to_dict()
        except VpetlError as e:  # errors cross the process boundary as data, re-raised typed by the ingress
            return {"error": {"code": e.code, "message": e.message}}

    def check_health(self) -> None:
        if not self.services.bank.backbone_sha256:
            raise RuntimeError("backbone not loaded")


def _ingress_app(settings: dict[str, Any]) -> Any:
    """Runs inside the ingress replica: the full app, whose predictor forwards to the predictor deployment."""
    from server.app import build_app as build_fastapi
    from server.services import create_services

    services = create_services(Settings(**settings))
    services.predictor = RemotePredictor(services.store, affinity=os.environ.get("VPETL_RAY_AFFINITY", "1") != "0")
    return build_fastapi(services)


def build_app(args: dict[str, Any]) -> Application:
    """Application builder (``serve run server.ray_app:build_app redis_url=…``)."""
    settings = Settings(**args)
    if not settings.redis_url:
        raise E.InvalidRequest("the Ray engine needs a shared Redis: set redis_url (or VPETL_REDIS_URL)")
    payload = settings.model_dump(mode="json")
    replicas = settings.replicas
    predictor = PredictorDeployment.options(num_replicas=replicas).bind(payload)

    def build_ingress() -> Any:  # a plain function: Ray treats it as an app builder, run inside the replica
        return _ingress_app(payload)

    ingress_cls = serve.deployment(
        serve.ingress(build_ingress)(), name="VpetlIngress",
        ray_actor_options={"num_cpus": 0}, max_ongoing_requests=512,
    )
    return ingress_cls.options(num_replicas=1).bind(predictor)
