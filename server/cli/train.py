"""``vpetl train``, ``vpetl pretrain``, ``vpetl experiment``: train an adapter, the demo backbone, the method table.

torch and the training code are imported inside the command bodies so that ``vpetl --help`` stays fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer

from server.cli.app import app, console, fail, print_json
from vpetl.errors import InvalidRequest, VpetlError


def _threads() -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("VPETL_TORCH_THREADS", min(2, os.cpu_count() or 1))))


def method_options(method: str, bottleneck: int | None, scale: float | None, positions: str | None,
                   options: list[str], no_head: bool) -> dict[str, Any]:
    """CLI flags -> method config options. ``--bottleneck`` sets the method's size field (PATT/BAPAT/AdaptMLP/
    prefix ``bottleneck``, LoRA ``rank``, VPT ``num_tokens``); ``--option key=value`` (value parsed as JSON when
    it can be) sets anything else."""
    from vpetl.petl.registry import get_method

    config_cls = get_method(method).config_cls
    fields = config_cls.field_names()
    out: dict[str, Any] = {}
    if bottleneck is not None:
        if config_cls.size_field is None:
            raise InvalidRequest(f"method {method!r} has no bottleneck size (options: {fields})")
        out[config_cls.size_field] = bottleneck
    for name, value in (("scale", scale), ("positions", positions)):
        if value is not None:
            if name not in fields:
                raise InvalidRequest(f"method {method!r} has no option {name!r} (options: {fields})")
            out[name] = value
    for item in options:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"--option takes key=value, got {item!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw
    if no_head:
        out["train_head"] = False
    return out


DATA_DIR = typer.Option(Path(".vpetl"), "--data-dir", envvar="VPETL_DATA_DIR",
                        help="vpetl's data directory (the demo backbone is cached under backbones/)")


@app.command()
def train(
    data: str = typer.Option(..., "--data", "-d", help="dataset directory (folder layout with train/val splits, "
                             "HMDB51 or SSv2 layout)"),
    task: str = typer.Option(..., "--task", "-t", help="task name stored in the adapter"),
    method: str = typer.Option("bapat", "--method", "-m", help="PETL method (vpetl inspect lists them)"),
    out: str = typer.Option(..., "--out", "-o", help="adapter file to write (.safetensors)"),
    backbone: str = typer.Option("vpetl-demo", "--backbone", "-b", help="backbone name"),
    checkpoint: str | None = typer.Option(None, "--checkpoint", help="backbone weights (default for vpetl-demo: "
                                          "the cached pretrained demo backbone)"),
    bottleneck: int | None = typer.Option(None, "--bottleneck", help="adapter size d (LoRA: rank)"),
    scale: float | None = typer.Option(None, "--scale", help="adapter scale s"),
    positions: str | None = typer.Option(None, "--positions", help="PATT/BAPAT slots, e.g. k,v"),
    option: list[str] = typer.Option([], "--option", help="other method option key=value (repeatable)"),
    no_head: bool = typer.Option(False, "--no-head", help="keep the head frozen at its random init"),
    epochs: int = typer.Option(15, "--epochs", min=1),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    accumulate: int = typer.Option(1, "--accumulate", min=1, help="micro-batches per optimiser step"),
    lr: float | None = typer.Option(None, "--lr", help="absolute peak lr (default: base lr × batch / 256)"),
    base_lr: float | None = typer.Option(None, "--base-lr", help="base lr for the linear scaling rule"),
    optimizer: str = typer.Option("sgd", "--optimizer", help="sgd | adamw"),
    weight_decay: float = typer.Option(0.0, "--weight-decay"),
    warmup_epochs: float = typer.Option(2.0, "--warmup-epochs"),
    seed: int = typer.Option(0, "--seed"),
    eval_views: str = typer.Option("1x1", "--eval-views", help="temporal clips x spatial crops per val video"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    workers: int = typer.Option(0, "--workers", min=0, help="decoder processes"),
    train_views: int = typer.Option(0, "--cache-views", min=0,
                                    help="decode each training clip N times once and reuse (0: decode every epoch)"),
    log: str | None = typer.Option(None, "--log", help="JSON-lines training log"),
    data_dir: Path = DATA_DIR,
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON, no progress bar"),
) -> None:
    """Train one adapter on a dataset directory and write the adapter file."""
    from server.cli.common import resolve_checkpoint
    from training.trainer import TrainConfig, train_adapter
    from vpetl.backbones.registry import create_backbone
    from vpetl.data.readers import open_dataset
    from vpetl.errors import DatasetError

    _threads()
    try:
        from vpetl.protocol import is_valid_task_name

        if not is_valid_task_name(task):
            raise InvalidRequest(f"task name {task!r} must match ^[a-z0-9][a-z0-9_.-]{{0,63}}$")
        parts = eval_views.lower().split("x")
        views = tuple(int(v) for v in parts if v.isdigit())
        if len(parts) != 2 or len(views) != 2 or min(views) < 1:
            raise InvalidRequest(f"--eval-views takes CLIPSxCROPS such as 4x3, got {eval_views!r}")
        opts = method_options(method, bottleneck, scale, positions, option, no_head)
        from vpetl.petl.registry import make_config

        method_config = make_config(method, **opts)
        config = TrainConfig(epochs=epochs, batch_size=batch_size, accumulate=accumulate, optimizer=optimizer,
                             base_lr=base_lr, lr=lr, warmup_epochs=warmup_epochs, weight_decay=weight_decay,
                             seed=seed, num_workers=workers, device=device, eval_views=views,  # type: ignore[arg-type]
                             train_views=train_views)
        train_set = open_dataset(data, "train")
        try:
            val_set = open_dataset(data, "val")
        except DatasetError:
            val_set = None  # a dataset without a validation split trains without evaluation
        weights = resolve_checkpoint(backbone, Path(checkpoint) if checkpoint else None, data_dir,
                                     progress=not as_json)
        model_backbone = create_backbone(backbone, checkpoint=weights)
        result = train_adapter(model_backbone, method_config, train_set, val_set, config, task=task, out=out,
                               log_path=log, progress=not as_json)
    except VpetlError as e:
        fail(e)
    except FileNotFoundError as e:
        fail(str(e))
    counts = result.model.parameter_counts()
    payload = {"task": task, "method": method_config.to_dict(), "backbone": backbone, "out": str(out),
               "sha256": result.sha256, "labels": result.labels, "trainable_params": counts["trainable"],
               "metrics": result.metrics, "config": config.to_dict()}
    if as_json:
        print_json(payload)
        return
    m = result.metrics
    acc = f"val top-1 {m['top1']:.1%}, top-5 {m['top5']:.1%}" if "top1" in m else "no validation split"
    console.print(f"[green]trained[/] {method} on {task}: {acc}, {counts['trainable']:,} trainable params, "
                  f"{m['train_time_s']:.0f}s → [bold]{out}[/] (sha256 {result.sha256[:12]})")


@app.command()
def pretrain(
    out: str = typer.Option(..., "--out", "-o", help="backbone file to write (.safetensors)"),
    data: str | None = typer.Option(None, "--data", "-d", help="source-domain dataset directory (default: "
                                    "render the synthetic `source` preset in memory); with --objective mae its "
                                    "labels are ignored, and DIR/any_name/*.mp4 without split files will do"),
    objective: str = typer.Option("supervised", "--objective",
                                  help="supervised (the source classes) | mae (VideoMAE's tube-masked pixel "
                                  "reconstruction: no labels needed)"),
    mask_ratio: float | None = typer.Option(None, "--mask-ratio", min=0.01, max=0.99,
                                            help="--objective mae: spatial positions hidden (default 0.75)"),
    seed: int = typer.Option(0, "--seed"),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="default: the ~3-minute recipe's (2)"),
    clips_per_class: int | None = typer.Option(None, "--clips-per-class", min=2,
                                               help="synthetic source clips per class (default 1460)"),
    reconstruction_weight: float | None = typer.Option(
        None, "--reconstruction-weight", min=0.0,
        help="weight of the tokens' own-pixel reconstruction loss beside the class loss (default 1; 0: class loss "
        "only, which discards appearance)"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    amp: str = typer.Option("auto", "--amp", help="auto (bf16 autocast on CUDA and on CPUs with native bf16, else "
                            "fp32) | bf16 | none (fp32: the same floats on every CPU at a given thread count)"),
    data_dir: Path = DATA_DIR,
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON, no progress bar"),
) -> None:
    """Pretrain the small `vpetl-demo` video ViT on the synthetic source domain, or on your own clips (cached by
    content hash under DATA_DIR/backbones; the same inputs return at once)."""
    import shutil

    from training.pretrain import PretrainConfig, pretrain_demo

    _threads()
    cache = data_dir / "backbones"
    try:
        changes = {k: v for k, v in (("epochs", epochs), ("clips_per_class", clips_per_class),
                                     ("reconstruction_weight", reconstruction_weight),
                                     ("mask_ratio", mask_ratio)) if v is not None}
        if objective not in ("supervised", "mae"):
            raise InvalidRequest(f"--objective must be 'supervised' or 'mae', got {objective!r}")
        if amp not in ("auto", "bf16", "none"):
            raise InvalidRequest(f"--amp must be auto, bf16 or none, got {amp!r}")
        config = PretrainConfig(seed=seed, device=device, objective=objective, amp=amp,
                                **changes)  # type: ignore[arg-type]
        result = pretrain_demo(config, cache, data=data, progress=not as_json)
    except VpetlError as e:
        fail(e)
    target = Path(out)
    if target.resolve() != result.path.resolve():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result.path, target)
    payload = {"out": str(target), **result.to_dict()}
    if as_json:
        print_json(payload)
        return
    verb = "[yellow]cached[/]" if result.cached else "[green]pretrained[/]"
    score = (f"source val top-1 {result.val_top1:.1%}" if result.val_top1 is not None else
             f"val masked-reconstruction loss {result.val_reconstruction_loss:.3f} (untrained: "
             f"{result.initial_val_reconstruction_loss:.3f})")
    console.print(f"{verb} vpetl-demo: {score} ({result.total_time_s:.0f}s) → [bold]{target}[/] "
                  f"(backbone sha256 {result.backbone_sha256[:12]})")


@app.command()
def experiment(
    out: str = typer.Option(..., "--out", "-o", help="directory for results.csv, results.md, results.png"),
    preset: str = typer.Option("mini", "--preset",
                               help="smoke (< 1 min, tests) | mini (~20 min) | standard (~25 min on 2 cores)"),
    seeds: int | None = typer.Option(None, "--seeds", min=1, help="seeds for the headline rows (default: preset)"),
    data_dir: Path = DATA_DIR,
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Compare PETL methods on the demo backbone (temporal + appearance tasks): CSV, Table-3 markdown, Fig.-1 plot."""
    from training.experiment import run_experiment

    _threads()
    try:
        report = run_experiment(preset, Path(out), seeds=seeds, data_dir=data_dir, progress=not as_json)
    except VpetlError as e:
        fail(e)
    if as_json:
        print_json(report)
        return
    console.print(Path(report["markdown"]).read_text())
    console.print(f"[green]wrote[/] {report['csv']}, {report['markdown']}, {report['plot']} "
                  f"({report['runs']} runs in {report['total_time_s']:.0f}s)")
