"""``vpetl up``: the one-command main job.

First run (a few minutes on 2 cores, with progress): an embedded redis-server under ``--data-dir`` (AOF on), the demo
backbone pretrained on the synthetic ``source`` domain, two demo tasks (``synthetic-order``,
``synthetic-appearance``) trained with BAPAT and published, then the local engine with a training worker thread on
127.0.0.1:8000. Later runs reuse everything (the backbone file, the synthetic clips, the adapters in Redis's AOF)
and are ready in seconds.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import typer

from server.cli.app import app, console, err_console, fail, print_json_line, reserve_stdout_for_json
from vpetl.errors import VpetlError

# task -> (synthetic preset, clips per class). The task that needs time is `order` ("A then B" vs "B then A"), not
# `temporal`: the demo backbone cannot tell which way an object turns in place, so the clean-scene `temporal` demo
# stays at 75% (its clockwise / counter-clockwise pair at chance; README, "Demo backbone"), where `order` reaches
# 92–97% (3 training seeds, 114 val clips) at 96 clips per class in about the time `temporal` took at 64
DEMO_TASKS = {"synthetic-order": ("order", 96), "synthetic-appearance": ("appearance", 64)}
# 8 epochs (was 10): on the demo backbone, training seeds 0, 1, 2 reach 95.6 / 92.1 / 95.6% on `order` and
# 99.0 / 98.1 / 100% on `appearance` (10 epochs, seed 0: 94.7 / 99.0%) in 4/5 of the time
DEMO_EPOCHS = 8
# the demo tasks are the clean-scene versions of the presets (one object on the class's own background, no
# clutter or distractors): what the 1M-parameter demo backbone can learn in the first-run budget; `vpetl
# experiment` measures the busy ones
DEMO_SCENES = "clean"
# short clips, as in pretraining: the demo spec's 8 frames at stride 2 then see the whole motion (of a 24–48-frame
# clip only a third to two thirds; measured: the clean `temporal` demo 71% → 83% on the same backbone)
DEMO_FRAMES = (16, 20)


def _demo_adapter(
    backbone: Any, store: Any, task: str, preset: str, data_dir: Path, *, clips_per_class: int, epochs: int,
    out: Any = console,
) -> None:
    """Train and publish one demo task unless the store already has a version for this backbone."""
    from training.trainer import TrainConfig, prefer_native_bf16, train_adapter
    from training.worker import record_meta
    from vpetl.data.readers import open_dataset
    from vpetl.data.synth import synthesize
    from vpetl.errors import UnknownTask
    from vpetl.petl.io import adapter_bytes
    from vpetl.petl.registry import make_config

    try:
        if store.get_record(task).backbone_sha256 == backbone.sha256():
            out.print(f"  {task}: adapter v{store.get_pointer(task)} cached")
            return
    except UnknownTask:
        pass
    out.print(f"  {task}: generating the synthetic [cyan]{preset}[/] dataset and training BAPAT …")
    root = synthesize(
        preset,
        data_dir / "demo-data" / preset,
        clips_per_class=clips_per_class,
        seed=1,
        size=80,  # even, above the demo spec's 73-px short side (it crops 64²)
        scenes=DEMO_SCENES,
        frames=DEMO_FRAMES,
        overwrite=True,  # vpetl up's own cache: a set from an older recipe is rewritten, not refused
    )
    train, val = open_dataset(root, "train"), open_dataset(root, "val")
    config = TrainConfig(
        epochs=epochs,
        batch_size=8,
        optimizer="adamw",
        lr=3e-3,
        warmup_epochs=1,
        train_views=1,
        eval_views=(1, 1),
        seed=0,
        amp=prefer_native_bf16("auto"),  # bf16 where the CPU has it, as the demo backbone's pretraining
        eval_every=0,  # validate once, after the last epoch: every epoch's validation cost ~15% of the training
    )
    result = train_adapter(
        backbone, make_config("bapat", bottleneck=32, mlp_bottleneck=32), train, val, config, task=task,
        progress=out is console,  # --json: no bars
    )
    data = adapter_bytes(
        result.model, task=task, labels=result.labels, metrics={k: v for k, v in result.metrics.items() if v == v}
    )
    record = store.publish(task, data, record_meta(result, backbone))
    out.print(f"  {task}: published v{record.version} (val top-1 {result.metrics.get('top1', 0):.2f})")


def _sample_clip(data_dir: Path) -> Path | None:
    """The first validation clip of the appearance demo set: held out from training, so predicting it right means
    something (the training clips' first file would be a clip the adapter has seen)."""
    root = data_dir / "demo-data" / "appearance"
    try:
        first = (root / "val.txt").read_text().split("\n", 1)[0].rsplit(" ", 1)[0]
    except OSError:
        return None
    return root / first if first and (root / first).is_file() else None


@app.command()
def up(
    port: int = typer.Option(8000, "--port", help="HTTP port"),
    host: str = typer.Option("127.0.0.1", "--host", help="bind address (non-loopback needs VPETL_ADMIN_TOKEN)"),
    data_dir: Path = typer.Option(
        Path(".vpetl"),
        "--data-dir",
        envvar="VPETL_DATA_DIR",
        help="everything vpetl up keeps: Redis AOF, backbone, clips",
    ),
    no_worker: bool = typer.Option(False, "--no-worker", help="do not run a training worker thread"),
    demo_clips_per_class: int | None = typer.Option(
        None, "--demo-clips-per-class", min=2,
        help="synthetic clips per class of each demo task (default: 96 for synthetic-order, 64 for "
        "synthetic-appearance)",
    ),  # fmt: skip
    demo_epochs: int = typer.Option(DEMO_EPOCHS, "--demo-epochs", min=1, help="training epochs of each demo task"),
    as_json: bool = typer.Option(
        False, "--json", help="JSON lines on stdout (one when serving, one when stopped); progress on stderr, no bars"
    ),
) -> None:
    """Start vpetl with everything embedded: Redis, the demo backbone, two demo tasks, the local engine."""
    import torch

    from server.app import build_app
    from server.cli.common import resolve_checkpoint, run_uvicorn
    from server.services import create_services
    from server.settings import get_settings
    from training.worker import Worker
    from vpetl.backbones import create_backbone
    from vpetl.store import AdapterStore, EmbeddedRedis
    from vpetl.store.adapters import redis_client
    from vpetl.store.backbones import BackboneRegistry, describe
    from vpetl.store.jobs import JobQueue

    if as_json:
        reserve_stdout_for_json()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    out = err_console if as_json else console  # --json: stdout carries only the JSON lines
    # VPETL_TORCH_THREADS as in `vpetl pretrain`/`train`: on an oversubscribed host 1 thread trains far faster
    # than 2 (OpenMP threads waiting on each other; see BENCHMARKS.md, "Demo")
    torch.set_num_threads(int(os.environ.get("VPETL_TORCH_THREADS", "2")))
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        settings = get_settings(host=host, port=port, data_dir=data_dir, backbone="vpetl-demo")
        settings.check_bind()
        out.print(f"[bold]vpetl up[/] — data in {data_dir.resolve()}")
        redis_server = EmbeddedRedis(data_dir / "redis").start()
    except VpetlError as e:
        fail(e)
    stop = threading.Event()
    services = None
    announced: list[dict[str, Any]] = []  # the --json ready line, once printed
    try:
        out.print("[bold]1/3[/] demo backbone")
        checkpoint = resolve_checkpoint("vpetl-demo", None, data_dir, progress=not as_json)
        backbone = create_backbone("vpetl-demo", checkpoint=checkpoint)
        out.print(f"  vpetl-demo ready ({backbone.num_params():,} parameters, sha256 {backbone.sha256()[:12]}…)")
        out.print("[bold]2/3[/] demo tasks")
        client = redis_client(redis_server.url)
        registry = BackboneRegistry(client)
        registered = registry.get()
        if registered is not None and registered.sha256 != backbone.sha256():
            # a newer demo backbone (a new pretraining recipe): this embedded deployment follows it, and the
            # demo tasks below are retrained for it
            out.print(f"  replacing the registered backbone {describe(registered)}")
            registry.unregister()
        store = AdapterStore(client)
        for task, (preset, clips_per_class) in DEMO_TASKS.items():
            _demo_adapter(backbone, store, task, preset, data_dir, epochs=demo_epochs, out=out,
                          clips_per_class=demo_clips_per_class or clips_per_class)  # fmt: skip
        out.print("[bold]3/3[/] server")
        settings = settings.model_copy(update={"redis_url": redis_server.url, "checkpoint": checkpoint})
        services = create_services(settings)
        if not no_worker:
            worker = Worker(backbone, JobQueue(client), store, services.clips, "vpetl-up")
            threading.Thread(target=worker.run, kwargs={"stop": stop}, daemon=True, name="vpetl-worker").start()
        sample = _sample_clip(data_dir)
        base = f"http://{host}:{port}"
        out.print(
            f"\n[bold green]ready[/] in {time.perf_counter() - started:.0f} s — {base} (API docs: {base}/docs, "
            f"web console: {base}/ui/)"
        )
        if sample is not None:
            out.print(f"sample clip: {sample}", soft_wrap=True)
            out.print(f'  curl -F clip=@{sample} "{base}/predict?task=synthetic-appearance"', soft_wrap=True)
            out.print(
                f"  .venv/bin/vpetl-edge predict {sample} --task synthetic-appearance --server {base}", soft_wrap=True
            )
        out.print("Ctrl-C to stop.\n")
        def announce(line: dict[str, Any]) -> None:
            print_json_line(line)
            announced.append(line)

        ready = {
            "event": "ready", "url": base, "ui": f"{base}/ui/", "docs": f"{base}/docs", "engine": "local",
            "backbone": "vpetl-demo", "backbone_sha256": backbone.sha256(), "tasks": sorted(DEMO_TASKS),
            "worker": not no_worker, "sample_clip": str(sample) if sample else None,
            "data_dir": str(data_dir.resolve()),
        }  # fmt: skip
        run_uvicorn(
            build_app(services), host=host, port=port, log_level="warning", timeout_graceful_shutdown=5,
            limit_concurrency=settings.limit_concurrency,  # beyond it uvicorn answers 503 before any app code
            on_ready=(lambda: announce({**ready, "seconds": round(time.perf_counter() - started, 1)}))
            if as_json else None,
        )  # fmt: skip
    except VpetlError as e:
        fail(e)
    finally:
        stop.set()
        if services is not None:
            services.close()
        redis_server.stop()
        if announced:  # here, not after uvicorn returns: on Ctrl-C uvicorn re-raises the signal once it has shut down
            print_json_line({"event": "stopped"})
