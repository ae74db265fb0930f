"""``vpetl inspect``: parameter counts, per-stage/block breakdown, input spec and token counts of a backbone;
with ``--method``, the method's trainable parameters split by component (adapter, head) and as a percentage of
the backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from server.cli.app import app, console, fail, print_json
from vpetl.errors import VpetlError


def backbone_report(name: str, checkpoint: Path | None, frames: int | None, size: int | None) -> dict[str, Any]:
    from vpetl.backbones import create_backbone

    model = create_backbone(name, checkpoint=checkpoint)
    spec = model.input_spec
    frames = frames or spec.num_frames
    size = size or spec.size
    return {
        "backbone": name,
        "family": model.family,
        "parameters": model.num_params(),
        "breakdown": model.param_breakdown(),
        "num_features": model.num_features,
        "input_spec": spec.model_dump(),
        "clip": {"frames": frames, "size": size},
        "tokens": model.token_info(frames, size),
        "sha256": model.sha256(),
        "_model": model,
    }


def method_report(
    backbone: Any,
    method: str,
    num_classes: int,
    bottleneck: int | None,
    positions: str | None,
    scale: float | None,
) -> dict[str, Any]:
    """Attach ``method`` to ``backbone`` and count; the flags map to the method's own option names."""
    from vpetl.errors import InvalidRequest
    from vpetl.petl import create_model, get_method, make_config

    cls = get_method(method)
    names = cls.config_cls.field_names()
    options: dict[str, Any] = {}
    if bottleneck is not None:
        if cls.config_cls.size_field is None:
            raise InvalidRequest(f"method {method!r} has no bottleneck option; valid options: {names}")
        options[cls.config_cls.size_field] = bottleneck  # bottleneck, LoRA's rank, VPT's num_tokens…
    if positions is not None:
        key = "positions" if "positions" in names else "targets" if "targets" in names else None
        if key is None:
            raise InvalidRequest(f"method {method!r} has no positions option; valid options: {names}")
        options[key] = positions
    if scale is not None:
        options["scale"] = scale
    config = make_config(method, **options)
    # The report's backbone is throwaway: attach in place unless the method trains backbone weights (then copy).
    share = not cls(config).trainable_backbone_parameters(backbone)
    model = create_model(backbone, config, num_classes, share_backbone=share)
    counts = model.parameter_counts()
    if share:
        model.remove_adapters()
    return {
        "config": config.to_dict(), "num_classes": num_classes, "servable": cls.servable,
        "default_backbone": cls.default_backbone, **counts,
    }


@app.command()
def inspect(
    backbone: str = typer.Option(..., "--backbone", "-b", help="backbone name, e.g. swin3d-b, clip-vit-b16"),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="weights to load strictly (.pth/.safetensors)"),
    frames: int | None = typer.Option(None, "--frames", help="clip length for token counts (default: input spec)"),
    size: int | None = typer.Option(None, "--size", help="frame size for token counts (default: input spec)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    method: str | None = typer.Option(None, "--method", "-m", help="count a PETL method's trainable parameters"),
    bottleneck: int | None = typer.Option(
        None, "--bottleneck", help="the method's width: bottleneck d (LoRA: rank, VPT: prompt tokens)"
    ),
    positions: str | None = typer.Option(
        None, "--positions", help="PATT/BAPAT slots (e.g. k,v), LoRA targets, ST-Adapter pre_attn,pre_mlp"
    ),
    scale: float | None = typer.Option(None, "--scale", help="the method's scale s"),
    num_classes: int = typer.Option(174, "--num-classes", help="head classes for --method (default: SSv2's 174)"),
) -> None:
    """Show a backbone's parameters (total and per stage/block), input spec and token counts; with --method, the
    method's trainable parameters by component and as a percentage of the backbone."""
    try:
        report = backbone_report(backbone, checkpoint, frames, size)
        if method is not None:
            report["method"] = method_report(report["_model"], method, num_classes, bottleneck, positions, scale)
        elif bottleneck is not None or positions is not None or scale is not None:
            fail("--bottleneck, --positions and --scale need --method")
    except VpetlError as e:
        fail(e)
    report.pop("_model")
    if as_json:
        print_json(report)
        return
    console.print(
        f"[bold]{report['backbone']}[/] ({report['family']}): {report['parameters']:,} parameters, "
        f"{report['num_features']}-d pooled feature, sha256 {report['sha256'][:12]}…"
    )
    table = Table("component", "parameters", title="breakdown")
    for key, value in report["breakdown"].items():
        table.add_row(key, f"{value:,}")
    console.print(table)
    spec = report["input_spec"]
    console.print(
        f"input: {spec['num_frames']} frames ({spec['sampling']}, rate {spec['sampling_rate']}), "
        f"{spec['size']}² crop, mean {spec['mean']}, std {spec['std']}"
    )
    tokens = report["tokens"]
    console.print(
        f"tokens for {report['clip']['frames']}×{report['clip']['size']}²: grid {tokens['grid']}, "
        f"{tokens['tokens']:,} tokens"
    )
    for stage in tokens.get("stages", []):
        console.print(
            f"  stage {stage['stage']}: grid {stage['grid']}, window {stage['window']}, "
            f"shift {stage['shift']}, {stage['windows_per_clip']} windows/clip"
        )
    if "method" in report:
        print_method(report["method"])


def print_method(m: dict[str, Any]) -> None:
    options = ", ".join(f"{k}={v}" for k, v in m["config"].items() if k != "method")
    console.print(
        f"[bold]{m['method']}[/] ({options}), {m['num_classes']} classes"
        + ("" if m["servable"] else " — a whole model, not servable from the adapter store")
    )
    table = Table("component", "parameters", "% of backbone", title="trainable parameters")
    backbone = m["backbone"]
    for key, value in m["components"].items():
        if key != "head":
            table.add_row(f"  {key}", f"{value:,}", f"{100 * value / backbone:.3f}%")
    table.add_row("adapter", f"{m['adapter']:,}", f"{100 * m['adapter'] / backbone:.3f}%")
    head = f"head{'' if m['head_trained'] else ' (frozen, stored)'}"
    table.add_row(head, f"{m['head']:,}", f"{100 * m['head'] / backbone:.3f}%")
    table.add_row("total trainable", f"{m['trainable']:,}", f"{m['percent_of_backbone']:.3f}%")
    console.print(table)
