"""``vpetl export hf|peft`` and ``vpetl import peft``: Hugging Face transformers and PEFT formats.

The converters live in :mod:`vpetl.formats`; these commands only parse flags, print, and exit non-zero with the
error's stable code when something cannot be converted (e.g. a BAPAT adapter to PEFT: it stays in vpetl's format).
``vpetl export-onnx`` (the edge graph) is a separate command and keeps its name.
"""

from __future__ import annotations

from pathlib import Path

import typer

from server.cli.app import app, console, fail, print_json
from vpetl.errors import VpetlError

export_app = typer.Typer(
    help="Write vpetl backbones/adapters in other formats (Hugging Face, PEFT).", no_args_is_help=True
)
import_app = typer.Typer(
    help="Read adapters from other formats (PEFT) into vpetl's adapter file.", no_args_is_help=True
)
app.add_typer(export_app, name="export")
app.add_typer(import_app, name="import")


@export_app.command("hf")
def export_hf_cmd(
    backbone: str = typer.Option(..., "--backbone", "-b", help="backbone name (videomae-b, videomae-tiny)"),
    out: Path = typer.Option(..., "--out", "-o", help="output directory (config.json + model.safetensors)"),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="backbone weights to load strictly"),
    adapter: Path | None = typer.Option(
        None, "--adapter", help="a LoRA/BitFit adapter file: merged into the weights, its head as the classifier"
    ),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Write BACKBONE as a transformers VideoMAE directory (VideoMAEForVideoClassification.from_pretrained)."""
    from vpetl.backbones import create_backbone
    from vpetl.formats.hf import export_hf, export_hf_task

    try:
        model = create_backbone(backbone, checkpoint=checkpoint)
        info = export_hf(model, out) if adapter is None else export_hf_task(model, adapter, out)
    except VpetlError as e:
        fail(e)
    if as_json:
        print_json(info)
        return
    what = (
        "the classifier is initialised on load"
        if adapter is None
        else f"task {info['task']!r} ({info['method']} merged, classifier included)"
    )
    console.print(
        f"[bold]{out}[/]: transformers VideoMAE ({info['tensors']} tensors, {info['parameters']:,} parameters), "
        f"backbone {backbone} (sha256 {info['backbone_sha256'][:12]}…); {what}"
    )


@export_app.command("peft")
def export_peft_cmd(
    adapter: Path = typer.Argument(..., help="a vpetl LoRA adapter file (.safetensors)"),
    out: Path = typer.Option(..., "--out", "-o", help="output directory (adapter_config.json + weights)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Write a vpetl LoRA ADAPTER as a PEFT LoRA directory for transformers' VideoMAE (other methods: refused)."""
    from vpetl.formats.peft import export_peft

    try:
        info = export_peft(adapter, out)
    except VpetlError as e:
        fail(e)
    if as_json:
        print_json(info)
        return
    console.print(
        f"[bold]{out}[/]: PEFT LoRA r={info['r']} alpha={info['lora_alpha']:g} on {', '.join(info['targets'])} "
        f"({info['modules']} modules) + classifier ({info['num_classes']} classes); base model: "
        f"`vpetl export hf --backbone {info['backbone']}`"
    )


@import_app.command("peft")
def import_peft_cmd(
    directory: Path = typer.Argument(..., help="a PEFT LoRA directory trained on transformers' VideoMAE"),
    task: str = typer.Option(..., "--task", "-t", help="task name recorded in the adapter"),
    backbone: str = typer.Option(..., "--backbone", "-b", help="vpetl backbone with the HF base model's weights"),
    out: Path = typer.Option(..., "--out", "-o", help="output vpetl adapter file (.safetensors)"),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="backbone weights (e.g. the HF base model)"),
    labels: str | None = typer.Option(None, "--labels", help="comma-separated class names (default LABEL_0, …)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Convert a PEFT LoRA DIRECTORY into a vpetl adapter file that `PUT /adapters/{task}` accepts."""
    from vpetl.artifact import adapter_sha256, atomic_write
    from vpetl.backbones import create_backbone
    from vpetl.formats.peft import peft_to_vpetl

    names = [s.strip() for s in labels.split(",")] if labels else None
    try:
        data = peft_to_vpetl(directory, create_backbone(backbone, checkpoint=checkpoint), task=task, labels=names)
    except VpetlError as e:
        fail(e)
    atomic_write(out, data)
    from vpetl.artifact import read_adapter_meta

    meta = read_adapter_meta(data)
    info = {
        "format": "vpetl",
        "out": str(out),
        "task": task,
        "sha256": adapter_sha256(data),
        "size": len(data),
        "method_config": meta.method_config,
        "num_classes": meta.num_classes,
        "labels": meta.labels,
        "backbone": meta.backbone,
        "backbone_sha256": meta.backbone_sha256,
        "trainable_params": meta.trainable_params,
    }
    if as_json:
        print_json(info)
        return
    cfg = meta.method_config
    console.print(
        f"[bold]{out}[/]: vpetl LoRA r={cfg['rank']} on {', '.join(cfg['targets'])}, {meta.num_classes} classes, "
        f"backbone {meta.backbone} (sha256 {info['sha256'][:12]}…); upload: PUT /adapters/{task}"
    )
