"""``vpetl worker``: the training worker — consumes ``vpetl:jobs``, trains, publishes adapters."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer

from server.cli.app import app, console, fail, print_json_line, reserve_stdout_for_json
from vpetl.errors import VpetlError


@app.command()
def worker(
    redis_url: str = typer.Option(..., "--redis-url", envvar="VPETL_REDIS_URL", help="the server's Redis"),
    data_dir: Path = typer.Option(
        Path(".vpetl"), "--data-dir", envvar="VPETL_DATA_DIR", help="backbone cache; clips too unless --clip-store"
    ),
    clip_store: str | None = typer.Option(
        None, "--clip-store", envvar="VPETL_CLIP_STORE",
        help="the API's clip store: a path or fsspec URL such as s3://bucket/prefix (default: DATA_DIR/clips); S3 "
        "endpoint and keys from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY",
    ),
    backbone: str = typer.Option("vpetl-demo", "--backbone", envvar="VPETL_BACKBONE"),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", envvar="VPETL_CHECKPOINT"),
    max_jobs: int | None = typer.Option(None, "--max-jobs", help="exit after this many jobs (default: run forever)"),
    claim_idle_ms: int = typer.Option(
        60_000, "--claim-idle-ms", envvar="VPETL_CLAIM_IDLE_MS", min=100,
        help="take over a job whose worker stopped heartbeating this long (it died); running jobs heartbeat every "
        "third of this",
    ),
    keep_versions: int = typer.Option(
        10, "--keep-versions", envvar="VPETL_KEEP_VERSIONS", min=0,
        help="adapter versions kept per task when this worker publishes (newest; 0 keeps all)",
    ),
    max_attempts: int = typer.Option(
        3, "--max-attempts", envvar="VPETL_MAX_ATTEMPTS", min=1,
        help="starts a job gets in all: after this many ended with a dead worker it is failed and dead-lettered",
    ),
    consumer: str | None = typer.Option(None, "--name", help="consumer name in the group (default host-pid)"),
    threads: int = typer.Option(2, "--threads", help="torch threads"),
    device: str = typer.Option(
        "auto", "--device", envvar="VPETL_DEVICE",
        help="auto (cuda when present), cpu, cuda or cuda:N; a device this machine lacks is refused at start",
    ),
    wait_s: float = typer.Option(
        60.0, "--backbone-wait-s", envvar="VPETL_BACKBONE_WAIT_S",
        help="with no weights of its own, wait this long for a server to register the backbone",
    ),
    as_json: bool = typer.Option(
        False, "--json", help="JSON lines on stdout: one when ready, one per job handled, one when stopped"
    ),
) -> None:
    """Train adapters for queued jobs (POST /jobs) and publish them to the adapter store."""
    import torch

    from server.cli.common import resolve_checkpoint
    from training.worker import Worker, check_device
    from vpetl.backbones.identity import resolve_backbone
    from vpetl.store import AdapterStore, ClipStore
    from vpetl.store.adapters import redis_client
    from vpetl.store.backbones import BackboneRegistry
    from vpetl.store.jobs import JobQueue, default_consumer_name

    if as_json:
        reserve_stdout_for_json()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(threads)
    try:
        check_device(device)  # before any job is claimed: a worker that cannot train must not take jobs
        client = redis_client(redis_url)
        registered = BackboneRegistry(client).get()
        # The deployment's backbone comes from Redis when one is registered (no local file needed on this node);
        # otherwise this worker registers its own (the demo backbone is pretrained on first use).
        ckpt = checkpoint if registered is not None else resolve_checkpoint(backbone, checkpoint, data_dir)
        model, _ = resolve_backbone(backbone, ckpt, BackboneRegistry(client), data_dir / "backbones", wait_s=wait_s)
        store = AdapterStore(client, keep_versions=keep_versions)
        clips = ClipStore(data_dir, client, store_url=clip_store)
    except VpetlError as e:
        fail(e)
    name = consumer or default_consumer_name()
    queue = JobQueue(client)
    if as_json:
        print_json_line({"event": "ready", "worker": name, "backbone": backbone, "backbone_sha256": model.sha256(),
                         "device": device})  # fmt: skip
    else:
        console.print(f"[bold]vpetl worker[/] {name}: backbone {backbone} ({model.sha256()[:12]}…), waiting for jobs")
    try:
        done = Worker(
            model, queue, store, clips, name, claim_idle_ms=claim_idle_ms, max_attempts=max_attempts,
            device=device, on_job=(lambda job_id, outcome: print_json_line(_job_event(queue, job_id, outcome)))
            if as_json else None,
        ).run(max_jobs=max_jobs)  # fmt: skip
    except KeyboardInterrupt:
        done = -1
    if as_json:
        print_json_line({"event": "stopped" if done >= 0 else "interrupted", "worker": name, "jobs": max(done, 0)})
    else:
        console.print(f"worker {name} stopped after {done} job(s)" if done >= 0 else f"worker {name} interrupted")


def _job_event(queue: Any, job_id: str, outcome: str) -> dict[str, Any]:
    """The ``--json`` line for one handled job: what happened and, from its record, where it stands now."""
    event: dict[str, Any] = {"event": "job", "job_id": job_id, "outcome": outcome}
    try:
        job = queue.get(job_id)
    except VpetlError:  # the record is gone (deleted or expired): the outcome is all there is to say
        return event
    result = job.get("result") or {}
    event.update(
        state=job.get("state"), task=(job.get("params") or {}).get("task"), version=job.get("version"),
        published=result.get("published"), val_top1=result.get("val_top1"), error=job.get("error"),
        attempts=job.get("attempts"),
    )  # fmt: skip
    return event
