"""``vpetl worker``: the training worker — consumes ``vpetl:jobs``, trains, publishes adapters."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from server.cli.app import app, console, fail
from vpetl.errors import VpetlError


@app.command()
def worker(
    redis_url: str = typer.Option(..., "--redis-url", envvar="VPETL_REDIS_URL", help="the server's Redis"),
    data_dir: Path = typer.Option(
        Path(".vpetl"), "--data-dir", envvar="VPETL_DATA_DIR", help="where uploaded clips live (shared with the API)"
    ),
    backbone: str = typer.Option("vpetl-demo", "--backbone", envvar="VPETL_BACKBONE"),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", envvar="VPETL_CHECKPOINT"),
    max_jobs: int | None = typer.Option(None, "--max-jobs", help="exit after this many jobs (default: run forever)"),
    claim_idle_ms: int = typer.Option(
        60_000, "--claim-idle-ms", help="take over a job another worker left idle this long (it died)"
    ),
    consumer: str | None = typer.Option(None, "--name", help="consumer name in the group (default host-pid)"),
    threads: int = typer.Option(2, "--threads", help="torch threads"),
) -> None:
    """Train adapters for queued jobs (POST /jobs) and publish them to the adapter store."""
    import torch

    from server.cli.common import resolve_checkpoint
    from training.worker import Worker
    from vpetl.backbones import create_backbone
    from vpetl.store import AdapterStore, ClipStore
    from vpetl.store.adapters import redis_client
    from vpetl.store.jobs import JobQueue, default_consumer_name

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(threads)
    try:
        ckpt = resolve_checkpoint(backbone, checkpoint, data_dir)
        model = create_backbone(backbone, checkpoint=ckpt)
        client = redis_client(redis_url)
        store = AdapterStore(client)
        clips = ClipStore(data_dir, client)
    except VpetlError as e:
        fail(e)
    name = consumer or default_consumer_name()
    console.print(f"[bold]vpetl worker[/] {name}: backbone {backbone} ({model.sha256()[:12]}…), waiting for jobs")
    try:
        done = Worker(model, JobQueue(client), store, clips, name, claim_idle_ms=claim_idle_ms).run(max_jobs=max_jobs)
    except KeyboardInterrupt:
        done = -1
    console.print(f"worker {name} stopped after {done} job(s)" if done >= 0 else f"worker {name} interrupted")
