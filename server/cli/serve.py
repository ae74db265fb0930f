"""``vpetl serve``: run the HTTP API on an engine (``local``: uvicorn in this process; ``ray``: Ray Serve).

Flags override ``VPETL_*`` environment variables, which override the defaults (all through ``Settings``). An
engine is a function ``(settings, log_level) -> None`` in :data:`ENGINES`; the Ray Serve engine plugs in there.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError

from server.cli.app import app, err_console, fail, print_json_line, reserve_stdout_for_json
from server.settings import Settings, get_settings
from vpetl.errors import InvalidRequest, VpetlError

logger = logging.getLogger(__name__)

# (settings, log level, ready): ``ready(line)`` is called once the API answers (``--json`` prints the line)
Engine = Callable[[Settings, str, "Ready | None"], None]
Ready = Callable[[dict[str, Any]], None]


def _ready_line(settings: Settings, engine: str, backbone: str, sha256: str | None) -> dict[str, Any]:
    url = f"http://{settings.host}:{settings.port}"
    return {
        "event": "ready", "url": url, "ui": f"{url}/ui/", "docs": f"{url}/docs", "engine": engine,
        "backbone": backbone, "backbone_sha256": sha256, "replicas": settings.replicas if engine == "ray" else 1,
        "dtype": settings.dtype, "auth": bool(settings.admin_token),
    }  # fmt: skip


def serve_local(settings: Settings, log_level: str, ready: Ready | None = None) -> None:
    """uvicorn in this process, one predictor (the micro-batcher mixes tasks within it)."""
    from server.app import build_app
    from server.cli.common import run_uvicorn
    from server.services import create_services, redact_url

    try:
        services = create_services(settings)
    except VpetlError as e:
        fail(e)
    try:
        err_console.print(
            f"[bold]vpetl[/] serving on http://{settings.host}:{settings.port} (engine local, backbone "
            f"{services.backbone.name}, redis {redact_url(services.redis_url)}; API docs at /docs, console at /ui/)",
            soft_wrap=True,
        )
        line = _ready_line(settings, "local", services.backbone.name, services.identity.sha256)
        run_uvicorn(
            build_app(services),
            host=settings.host,
            port=settings.port,
            log_level=log_level,
            timeout_graceful_shutdown=5,
            lifespan="on",
            limit_concurrency=settings.limit_concurrency,  # beyond it uvicorn answers 503 before any app code
            on_ready=(lambda: ready(line)) if ready else None,
        )
    finally:
        services.close()


def serve_ray(settings: Settings, log_level: str, ready: Ready | None = None) -> None:
    """Ray Serve: an ingress deployment (the same FastAPI app) and ``--replicas`` predictor replicas, each with its
    own mixed-task micro-batcher. Joins the cluster at ``RAY_ADDRESS`` if set, else starts a local Ray."""
    import os
    import time

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import serve

    from server.ray_app import APP_NAME, build_app, replica_args
    from server.services import redact_url
    from vpetl.store import EmbeddedRedis

    embedded = None
    if settings.redis_url is None:  # replicas are separate processes: they share one (embedded) redis-server
        embedded = EmbeddedRedis(settings.data_dir / "redis").start()
        settings = settings.model_copy(update={"redis_url": embedded.url})
    if settings.admin_token:  # replicas read secrets from their environment, never from the app's args
        os.environ["VPETL_ADMIN_TOKEN"] = settings.admin_token
    try:
        registered = _register_backbone(settings)  # here, where the checkpoint is: replicas load it from Redis
        settings = settings.model_copy(update={"checkpoint": None})
        address = os.environ.get("RAY_ADDRESS")
        # A local Ray instance sized for the most replicas autoscaling may start, not only the first ones.
        most = max(settings.replicas, settings.max_replicas or 0)
        needed = most * settings.predictor_num_cpus + settings.ingress_replicas * settings.ingress_num_cpus
        ray.init(
            # GPUs: Ray counts the machine's own (a made-up count would schedule replicas on GPUs that do not exist)
            address=address, num_cpus=None if address else max(2, os.cpu_count() or 2, math.ceil(needed)),
            include_dashboard=False, log_to_driver=log_level == "debug", logging_level="ERROR",
            ignore_reinit_error=True,
        )  # fmt: skip
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build_app(replica_args(settings)), name=APP_NAME, route_prefix="/")
        err_console.print(
            f"[bold]vpetl[/] serving on http://{settings.host}:{settings.port} (engine ray, {settings.replicas} "
            f"predictor replica(s), redis {redact_url(str(settings.redis_url))}; API docs at /docs, console at /ui/)",
            soft_wrap=True,
        )
        if ready is not None:  # serve.run returned: the ingress and the predictor replicas are up
            ready(_ready_line(settings, "ray", settings.backbone, registered))
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        try:
            serve.shutdown()
            ray.shutdown()
        finally:
            if embedded is not None:
                embedded.stop()


def _register_backbone(settings: Settings) -> str:
    """Resolve (and, on first start, register) the deployment's backbone in Redis, or refuse to start; returns
    its sha256."""
    from vpetl.backbones.identity import resolve_backbone
    from vpetl.store.adapters import redis_client
    from vpetl.store.backbones import BackboneRegistry, describe

    client = redis_client(str(settings.redis_url))
    try:
        _, record = resolve_backbone(
            settings.backbone, settings.checkpoint, BackboneRegistry(client), settings.data_dir / "backbones"
        )
        logger.info("deployment backbone: %s", describe(record))
        return record.sha256
    except VpetlError as e:
        fail(e)
    finally:
        client.close()


def check_local_gpus(settings: Settings) -> None:
    """Refuse GPU predictor replicas a local Ray instance cannot hold (they would wait for a GPU forever). A
    cluster (``RAY_ADDRESS``) is Ray's to schedule."""
    import os

    if settings.engine != "ray" or settings.predictor_num_gpus <= 0 or os.environ.get("RAY_ADDRESS"):
        return
    import torch

    replicas, gpus_each = max(settings.replicas, settings.max_replicas or 0), settings.predictor_num_gpus
    have = torch.cuda.device_count()
    want = math.ceil(replicas * gpus_each)
    if have < want:
        raise InvalidRequest(
            f"{replicas} predictor replica(s) × {gpus_each:g} GPU need {want} GPU(s); this machine has {have}: "
            "lower VPETL_PREDICTOR_NUM_GPUS / --replicas, or run against a Ray cluster with GPUs (RAY_ADDRESS)"
        )


ENGINES: dict[str, Engine] = {"local": serve_local, "ray": serve_ray}


@app.command()
def serve(
    engine: str | None = typer.Option(None, help="local (uvicorn) or ray (Ray Serve) (default: local)"),
    host: str | None = typer.Option(None, help="bind address; non-loopback needs an admin token (default: 127.0.0.1)"),
    port: int | None = typer.Option(None, help="bind port (default: 8000)"),
    redis_url: str | None = typer.Option(None, help="Redis URL; unset: an embedded redis-server under --data-dir"),
    backbone: str | None = typer.Option(None, help="backbone name (default: vpetl-demo)"),
    checkpoint: Path | None = typer.Option(None, help="backbone checkpoint to load strictly"),
    data_dir: Path | None = typer.Option(None, help="embedded Redis, uploaded clips (default: .vpetl)"),
    clip_store: str | None = typer.Option(
        None, help="uploaded clips: a path or fsspec URL such as s3://bucket/prefix, shared with the workers "
        "(default: DATA_DIR/clips)"
    ),
    device: str | None = typer.Option(None, help="torch device (default: cpu)"),
    dtype: str | None = typer.Option(
        None, help="serving dtype of backbone and adapters: fp32, bf16 or fp16; logits stay fp32 (default: fp32)"
    ),
    replicas: int | None = typer.Option(None, help="predictor replicas (ray engine) (default: 1)"),
    batch_buckets: str | None = typer.Option(
        None, help="pad batches to these sizes, e.g. 1,8,32: fixed shapes for --compile (default: no padding)"
    ),
    compile_backbone: bool | None = typer.Option(
        None, "--compile/--no-compile",
        help="torch.compile the backbone forward; each new task mix compiles again, so measure first "
        "(`vpetl bench gpu`) (default: off)",
    ),
    max_batch_size: int | None = typer.Option(None, help="clips per model batch (default: 8)"),
    max_wait_ms: float | None = typer.Option(None, help="longest wait for a batch to fill, ms (default: 5)"),
    max_queue: int | None = typer.Option(None, help="clips that may wait; beyond it requests get 503 (default: 64)"),
    batch_policy: str | None = typer.Option(
        None, help="mixed (one forward per batch across tasks) or per-task (split by task: the baseline) "
        "(default: mixed)"
    ),
    cache_mb: float | None = typer.Option(None, help="adapter cache budget per predictor, MiB (default: 256)"),
    max_upload_mb: float | None = typer.Option(None, help="clip upload limit, MiB (default: 64)"),
    max_adapter_mb: float | None = typer.Option(None, help="adapter upload limit, MiB (default: 64)"),
    admin_token: str | None = typer.Option(
        None, help="bootstrap admin token, every scope and task (prefer env VPETL_ADMIN_TOKEN: flags show in `ps`)"
    ),
    log_level: str = typer.Option("info", help="debug, info, warning, error"),
    as_json: bool = typer.Option(
        False, "--json", help="JSON lines on stdout: one once the API answers (url, engine, backbone), one on stop"
    ),
) -> None:
    """Serve the HTTP API (predict, adapters, datasets, backbone, health, metrics)."""
    if as_json:
        reserve_stdout_for_json()
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = get_settings(
            engine=engine, host=host, port=port, redis_url=redis_url, backbone=backbone, checkpoint=checkpoint,
            data_dir=data_dir, clip_store=clip_store, device=device, dtype=dtype, replicas=replicas,
            batch_buckets=batch_buckets, compile=compile_backbone,
            max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue, batch_policy=batch_policy,
            cache_mb=cache_mb, max_upload_mb=max_upload_mb, max_adapter_mb=max_adapter_mb, admin_token=admin_token,
        )  # fmt: skip
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()[:5])
        fail(f"invalid settings: {problems}")
    try:
        settings.check_bind()
        check_local_gpus(settings)
        from server.cli.common import resolve_checkpoint

        # The demo backbone's weights come from `vpetl pretrain` (cached under the data dir; built on first use).
        ckpt = resolve_checkpoint(settings.backbone, settings.checkpoint, settings.data_dir)
        settings = settings.model_copy(update={"checkpoint": ckpt})
    except VpetlError as e:
        fail(e)
    announced: list[dict[str, Any]] = []

    def announce(line: dict[str, Any]) -> None:
        print_json_line(line)
        announced.append(line)

    try:
        ENGINES[settings.engine](settings, log_level.lower(), announce if as_json else None)
    finally:
        if announced:  # here: on Ctrl-C uvicorn re-raises the signal once it has shut down
            print_json_line({"event": "stopped", "engine": settings.engine})
