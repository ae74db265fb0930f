"""``vpetl-edge``: the device-side command (no torch). Predict through the server or locally with onnxruntime,
manage adapters, upload clips, start training jobs and keep a local cache in sync.

Every command takes ``--server`` (env ``VPETL_SERVER``), ``--token`` (env ``VPETL_TOKEN``) and ``--json`` (one JSON
document on stdout, nothing else there). Progress bars go to stderr, only on a terminal and not with ``--json``.
An error prints one line ``error [code]: message`` on stderr and exits 1.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from edge_client.sdk import DEFAULT_SERVER, Client
from vpetl.errors import VpetlError
from vpetl.protocol import JobInfo

app = typer.Typer(
    name="vpetl-edge",
    help="vpetl edge client (no torch): predict via the server or locally with onnxruntime, manage adapters, "
    "upload clips, train.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
adapters_app = typer.Typer(help="List, pull, push, remove and roll back task adapters.", no_args_is_help=True)
app.add_typer(adapters_app, name="adapters")

out = Console()
err = Console(stderr=True)

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg"}

ServerOpt = Annotated[str, typer.Option("--server", envvar="VPETL_SERVER", help="server base URL")]
TokenOpt = Annotated[
    str | None, typer.Option("--token", envvar="VPETL_TOKEN", help="API key or admin token", show_default=False)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]
CacheOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache", envvar="VPETL_EDGE_CACHE", help="local cache dir (default ~/.cache/vpetl-edge)", show_default=False
    ),
]
TaskOpt = Annotated[str, typer.Option("--task", "-t", help="task name")]
DtypeOpt = Annotated[
    str | None,
    typer.Option(
        "--dtype",
        envvar="VPETL_EDGE_DTYPE",
        show_default=False,
        help="download adapters as float16 (half the bytes of fp32) or float32 (default: as stored)",
    ),
]


# ----------------------------------------------------------------------------------------------------- helpers
def fail(error: VpetlError | str) -> NoReturn:
    """One line on stderr, exit 1 (no traceback for anything a user can cause)."""
    if isinstance(error, VpetlError):
        err.print(f"[bold red]error[/] {escape('[' + error.code + ']')}: {escape(error.message)}", soft_wrap=True)
    else:
        err.print(f"[bold red]error[/]: {escape(str(error))}", soft_wrap=True)
    raise typer.Exit(1)


@contextmanager
def handled() -> Iterator[None]:
    try:
        yield
    except VpetlError as e:
        fail(e)
    except OSError as e:  # a local file that cannot be read or written
        fail(VpetlError(f"{e.strerror or e}: {getattr(e, 'filename', '') or ''}".rstrip(": "), code="io_error"))


def emit(payload: Any) -> None:
    """JSON on stdout: pydantic models, lists of them and plain data."""

    def plain(value: Any) -> Any:
        if isinstance(value, BaseModel):
            return value.model_dump(mode="json")
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    sys.stdout.write(json.dumps(plain(payload), indent=2, default=str) + "\n")


def client(server: str, token: str | None) -> Client:
    return Client(server, token=token)


@contextmanager
def transfer_bar(
    enabled: bool, description: str, total: int | None = None
) -> Iterator[Callable[[int, int | None], None]]:
    """A byte progress bar on stderr (a terminal only: no bar debris in logs); yields ``progress(done, total)``."""
    if not enabled or not err.is_terminal:
        yield lambda done, total: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(description, total=total)

        def update(done: int, size: int | None) -> None:
            bar.update(task, completed=done, total=size if size is not None else total)

        yield update


def _size(n: int | float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _video_files(paths: list[Path]) -> list[Path]:
    """Files as given; directories expanded to the video files under them (sorted)."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES)
        else:
            files.append(p)
    if not files:
        fail(VpetlError("no video files given (or none under the given directories)", code="invalid_request"))
    return files


# ----------------------------------------------------------------------------------------------------- predict
def _local_predictions(
    c: Client,
    quick: Client,
    cache_dir: Path | None,
    task: str,
    version: int | None,
    clips: list[Path],
    topk: int,
    show: bool,
) -> list[dict[str, Any]]:
    from edge_client.cache import EdgeCache
    from edge_client.local import LocalTask

    local = LocalTask(EdgeCache(cache_dir), task, version, warn=lambda m: err.print(f"[yellow]{escape(m)}[/]"))
    with transfer_bar(show, f"adapter {task}") as adapter_bar, transfer_bar(show, "backbone graph") as graph_bar:
        local.refresh(c, quick, progress_adapter=adapter_bar, progress_graph=graph_bar)
    return [{"clip": str(clip), **local.predict(clip, topk)} for clip in clips]


@app.command()
def predict(
    clips: Annotated[list[Path], typer.Argument(help="video files (or directories of them)")],
    task: TaskOpt,
    version: Annotated[int | None, typer.Option(help="adapter version (default: current)")] = None,
    local: Annotated[bool, typer.Option("--local", help="run on this device with onnxruntime")] = False,
    topk: Annotated[int, typer.Option("--topk", "-k", min=1, help="labels to show")] = 5,
    cache: CacheOpt = None,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Classify clips with TASK's adapter: on the server (default) or locally (--local; downloads the backbone
    graph once and the adapter when it changed, works offline from the cache)."""
    files = _video_files(clips)
    from edge_client.local import quick_client

    with handled(), client(server, token) as c, quick_client(server, token) as quick:
        if local:
            results = _local_predictions(c, quick, cache, task, version, files, topk, show=not as_json)
        else:
            results = []
            for clip in files:
                with transfer_bar(not as_json, f"upload {clip.name}") as progress:
                    r = c.predict(clip, task, version=version, topk=topk, progress=progress)
                results.append({"clip": str(clip), "local": False, **r.model_dump(mode="json")})
    if as_json:
        emit(results)
        return
    table = Table("clip", "top labels", "version", "ms", title=f"task {task}" + (" (local)" if local else ""))
    for r in results:
        labels = ", ".join(f"{p['label']} {p['score']:.2f}" for p in r["predictions"])
        table.add_row(Path(r["clip"]).name, labels, str(r["version"]), f"{r['timing_ms']['total']:.0f}")
    out.print(table)


# ---------------------------------------------------------------------------------------------------- adapters
@adapters_app.command("ls")
def adapters_ls(
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
    prefix: Annotated[str | None, typer.Option(help="only task names starting with this")] = None,
    method: Annotated[str | None, typer.Option(help="only tasks whose current adapter uses this method")] = None,
) -> None:
    """Every task on the server with its current adapter (fetched page by page)."""
    with handled(), client(server, token) as c:
        items = list(c.iter_adapters(prefix=prefix, method=method))
    if as_json:
        emit(items)
        return
    table = Table("task", "version", "method", "params", "classes", "size", "sha256")
    for a in items:
        table.add_row(
            a.task,
            f"{a.version}/{a.latest_version}",
            a.method or "-",
            f"{a.trainable_params or 0:,}",
            str(a.num_classes or "-"),
            _size(a.size),
            a.sha256[:12],
        )
    out.print(table if items else "no adapters on the server")


@adapters_app.command("pull")
def adapters_pull(
    task: Annotated[str, typer.Argument(help="task name")],
    version: Annotated[int | None, typer.Option(help="a specific version (default: current)")] = None,
    dtype: DtypeOpt = None,
    cache: CacheOpt = None,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Download TASK's adapter into the local cache (nothing moves when the cached one is current)."""
    from edge_client.cache import EdgeCache

    store = EdgeCache(cache)
    with handled(), client(server, token) as c, transfer_bar(not as_json, f"adapter {task}") as progress:
        entry, changed = store.pull_adapter(c, task, version, progress=progress, dtype=dtype)
        path = store.adapter_path(task)
    payload = {
        "task": task,
        "version": entry.version,
        "sha256": entry.sha256,
        "size": entry.size,
        "dtype": entry.dtype or "as stored",
        "downloaded": changed,
        "path": str(path),
    }
    if as_json:
        emit(payload)
    else:
        what = "downloaded" if changed else "already current"
        out.print(f"{task} v{entry.version} ({_size(entry.size)}, {entry.sha256[:12]}): {what} → {path}")


@adapters_app.command("push")
def adapters_push(
    file: Annotated[Path, typer.Argument(help="adapter .safetensors file")],
    task: TaskOpt,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload an adapter file as TASK's new version (needs the admin token)."""
    with handled(), client(server, token) as c:
        ref = c.push_adapter(file, task)
    if as_json:
        emit(ref)
    else:
        out.print(f"{ref.task}: version {ref.version} published (sha256 {ref.sha256[:12]})")


@adapters_app.command("rm")
def adapters_rm(
    task: Annotated[str, typer.Argument(help="task name")],
    cache: CacheOpt = None,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete TASK and all its versions on the server (and its local copy); needs the admin token."""
    from edge_client.cache import EdgeCache

    with handled(), client(server, token) as c:
        gone = c.delete_adapter(task)
        EdgeCache(cache).remove(task)
    if as_json:
        emit(gone)
    else:
        out.print(f"{gone.task}: deleted ({gone.versions_removed} versions)")


@adapters_app.command("rollback")
def adapters_rollback(
    task: Annotated[str, typer.Argument(help="task name")],
    version: Annotated[int, typer.Argument(help="existing version to make current")],
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Make an older version of TASK current again (needs the admin token)."""
    with handled(), client(server, token) as c:
        ref = c.rollback(task, version)
    if as_json:
        emit(ref)
    else:
        out.print(f"{ref.task}: version {ref.version} is current (sha256 {ref.sha256[:12]})")


# ----------------------------------------------------------------------------------------------------- upload
@app.command()
def upload(
    clips: Annotated[list[Path], typer.Argument(help="video files (or directories of them)")],
    task: TaskOpt,
    label: Annotated[str, typer.Option("--label", "-l", help="class label of these clips")],
    split: Annotated[str, typer.Option(help="train or val")] = "train",
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload labelled clips to TASK's dataset (streamed, validated by the server)."""
    if split not in ("train", "val"):
        fail(VpetlError(f"--split must be train or val, got {split!r}", code="invalid_request"))
    files = _video_files(clips)
    total = sum(f.stat().st_size for f in files if f.is_file())
    results = []
    with (
        handled(),
        client(server, token) as c,
        transfer_bar(not as_json, f"upload {len(files)} clip(s)", total) as progress,
    ):
        sent = 0
        for f in files:
            r = c.upload_clip(f, task, label, split, progress=lambda done, _t, base=sent: progress(base + done, total))
            sent += f.stat().st_size
            results.append(r)
    if as_json:
        emit(results)
        return
    dup = sum(1 for r in results if r.duplicate)
    out.print(
        f"{task}: {len(results)} clip(s) uploaded as {label!r} ({split})" + (f", {dup} already there" if dup else "")
    )


# ------------------------------------------------------------------------------------------------------ jobs
FINAL_STATES = ("succeeded", "failed")


def _job_line(job: JobInfo) -> str:
    p = job.progress
    parts = [f"epoch {p['epoch']}/{p.get('epochs', '?')}" if "epoch" in p else job.state]
    for key in ("loss", "acc", "train_acc", "val_acc", "val_top1"):
        if isinstance(p.get(key), int | float):
            parts.append(f"{key} {p[key]:.3f}")
    return "  ".join(parts)


def _wait_for(c: Client, job_id: str, show: bool, poll: float, timeout: float | None) -> JobInfo:
    start = time.monotonic()
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[line]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True, disable=not show or not err.is_terminal) as bar:
        handle = bar.add_task(f"job {job_id}", total=None, line="queued")
        while True:
            job = c.job(job_id)
            p = job.progress
            # optimiser steps when the worker reports them (a smooth bar), else epochs
            done_key, total_key = (
                ("step", "total_steps") if isinstance(p.get("total_steps"), int) else ("epoch", "epochs")
            )
            total = p.get(total_key)
            bar.update(
                handle,
                line=_job_line(job),
                total=total if isinstance(total, int) else None,
                completed=p.get(done_key) if isinstance(p.get(done_key), int) else 0,
            )
            if job.state in FINAL_STATES:
                return job
            if timeout is not None and time.monotonic() - start > timeout:
                raise VpetlError(f"job {job_id} still {job.state} after {timeout:g} s", code="timeout")
            time.sleep(poll)


@app.command()
def train(
    task: TaskOpt,
    method: Annotated[str, typer.Option(help="PETL method (bapat, patt, adaptmlp, lora, linear, …)")] = "bapat",
    bottleneck: Annotated[int | None, typer.Option(help="adapter width (PATT d / AdaptMLP r / LoRA rank)")] = None,
    scale: Annotated[float | None, typer.Option(help="adapter scale s")] = None,
    epochs: Annotated[int | None, typer.Option(help="training epochs")] = None,
    batch_size: Annotated[int | None, typer.Option(help="clips per step")] = None,
    lr: Annotated[float | None, typer.Option(help="learning rate")] = None,
    publish_if_worse: Annotated[
        bool, typer.Option("--publish-if-worse", help="publish even if val top-1 is below the current version's")
    ] = False,
    wait: Annotated[bool, typer.Option("--wait", help="follow the job until it succeeds or fails")] = False,
    poll: Annotated[float, typer.Option(help="seconds between status polls with --wait")] = 1.0,
    timeout: Annotated[float | None, typer.Option(help="give up waiting after this many seconds")] = None,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a training job on TASK's uploaded clips; with --wait, show epoch/loss/acc until it finishes."""
    params = {
        "task": task,
        "method": method,
        "bottleneck": bottleneck,
        "scale": scale,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "publish_if_worse": publish_if_worse or None,
    }
    with handled(), client(server, token) as c:
        created = c.create_job(**params)
        if not wait:
            if as_json:
                emit(created)
            else:
                out.print(f"job {created.job_id} queued for {task}; follow it with `vpetl-edge jobs {created.job_id}`")
            return
        job = _wait_for(c, created.job_id, not as_json, poll, timeout)
    if as_json:
        emit(job)
    if job.state != "succeeded":
        fail(VpetlError(f"job {job.id} {job.state}: {job.error or 'no details'}", code="job_failed"))
    if not as_json:
        if job.result.get("published") is False:
            out.print(f"job {job.id} succeeded but published nothing: {job.result.get('reason', '')}")
        else:
            out.print(f"job {job.id} succeeded: {task} version {job.version} published  {_job_line(job)}")


@app.command()
def jobs(
    job_id: Annotated[str | None, typer.Argument(help="one job's id (default: list recent jobs)")] = None,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Training jobs: state, progress, result."""
    with handled(), client(server, token) as c:
        items = [c.job(job_id)] if job_id else c.jobs()
    if as_json:
        emit(items[0] if job_id else items)
        return
    table = Table("job", "task", "state", "progress", "version", "error")
    for j in items:
        table.add_row(
            j.id, str(j.params.get("task", "-")), j.state, _job_line(j), str(j.version or "-"), str(j.error or "")
        )
    out.print(table if items else "no jobs")


# ------------------------------------------------------------------------------------------------------ sync
@app.command()
def sync(
    backbone: Annotated[bool, typer.Option(help="also fetch the backbone graph if it is missing")] = True,
    family: Annotated[str | None, typer.Option(help="ONNX graph family (default: the server's)")] = None,
    quant: Annotated[
        str | None, typer.Option("--quant", help="graph variant: fp32 (default) or int8 (a quarter of the bytes)")
    ] = None,
    merged: Annotated[
        list[str] | None,
        typer.Option("--merged", help="also keep TASK's merged single-task graph (repeatable; the fastest path)"),
    ] = None,
    dtype: DtypeOpt = None,
    cache: CacheOpt = None,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Pull every task's newest adapter (only those that changed) and the backbone graph if missing; with --quant
    or --merged, also print how each variant agrees with fp32 on the tasks' validation clips."""
    from edge_client.cache import EdgeCache
    from edge_client.local import agreement_line, variant_agreements

    if quant not in (None, "fp32", "int8"):
        fail(VpetlError(f"--quant must be fp32 or int8, got {quant!r}", code="invalid_request"))
    store = EdgeCache(cache)
    with handled(), client(server, token) as c, transfer_bar(not as_json, "sync") as progress:
        report = store.sync(
            c, backbone=backbone, family=family, progress=progress, dtype=dtype, quant=quant, merged=merged or ()
        )
        agreements = variant_agreements(c, store, quant, merged or []) if quant not in (None, "fp32") or merged else {}
    if as_json:
        emit({"cache": str(store.root), **report.to_dict(), "agreement": agreements})
        return
    for task, state in sorted(report.adapters.items()):
        out.print(f"  {task}: {state}")
    for task, state in sorted(report.graphs.items()):
        out.print(f"  merged graph {task}: {state}")
    out.print(
        f"backbone{' (' + quant + ')' if quant else ''}: {report.backbone}; received "
        f"{_size(report.adapter_bytes)} of adapters and {_size(report.onnx_bytes)} of graph in "
        f"{report.requests} request(s), {report.seconds * 1e3:.0f} ms → {store.root}"
    )
    for name, a in agreements.items():
        out.print(agreement_line(name, a))


# ----------------------------------------------------------------------------------------------------- watch
@app.command()
def watch(
    folder: Annotated[Path, typer.Argument(help="folder a camera writes clip segments into")],
    task: TaskOpt,
    local: Annotated[bool, typer.Option("--local", help="always predict on this device")] = False,
    upload_label: Annotated[
        str | None, typer.Option("--upload-label", help="also upload each clip with this label (queued on disk)")
    ] = None,
    split: Annotated[str, typer.Option(help="dataset split of uploads: train or val")] = "train",
    out_file: Annotated[Path | None, typer.Option("--out", help="append JSON lines here (default stdout)")] = None,
    topk: Annotated[int, typer.Option("--topk", "-k", min=1, help="labels per clip")] = 5,
    interval: Annotated[float, typer.Option(min=0.01, help="seconds between folder polls")] = 0.5,
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds before an unresponsive server is given up")] = 1.5,
    retry_every: Annotated[float, typer.Option(min=0.1, help="seconds between tries of a lost server")] = 10.0,
    max_clips: Annotated[int | None, typer.Option(min=1, help="stop after this many clips")] = None,
    once: Annotated[bool, typer.Option("--once", help="handle the clips there now, then stop")] = False,
    queue_max_mb: Annotated[float, typer.Option(min=0.0, help="upload queue bound (MiB)")] = 512.0,
    queue_max_clips: Annotated[int, typer.Option(min=0, help="upload queue bound (clips)")] = 10_000,
    cache: CacheOpt = None,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
) -> None:
    """Predict every new clip in FOLDER as one JSON line; fall back to this device when the server is unreachable
    (≤ --timeout), and queue labelled uploads on disk until it is back (--upload-label)."""
    from edge_client.cache import EdgeCache
    from edge_client.watch import WatchConfig, Watcher

    if split not in ("train", "val"):
        fail(VpetlError(f"--split must be train or val, got {split!r}", code="invalid_request"))
    if not folder.is_dir():
        fail(VpetlError(f"{folder}: not a directory", code="invalid_request"))
    config = WatchConfig(
        folder=folder, task=task, local=local, upload_label=upload_label, split=split, topk=topk, interval=interval,
        timeout=timeout, retry_every=retry_every, max_clips=max_clips, once=once,
        queue_max_bytes=int(queue_max_mb * 2**20), queue_max_clips=queue_max_clips,
    )  # fmt: skip
    sink = out_file.open("a") if out_file else sys.stdout
    say = lambda m: err.print(escape(m), soft_wrap=True)  # noqa: E731
    watcher = Watcher(config, EdgeCache(cache), server, token, sink, say=say)
    try:
        with handled():
            watcher.run()
    except KeyboardInterrupt:
        pass
    finally:
        watcher.close()
        if out_file:
            sink.close()


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
