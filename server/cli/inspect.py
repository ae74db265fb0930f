"""``vpetl inspect``: parameter counts, per-stage/block breakdown, input spec and token counts of a backbone."""

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


@app.command()
def inspect(
    backbone: str = typer.Option(..., "--backbone", "-b", help="backbone name, e.g. swin3d-b, videomae-b, vit-b16"),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="weights to load strictly (.pth/.safetensors)"),
    frames: int | None = typer.Option(None, "--frames", help="clip length for token counts (default: input spec)"),
    size: int | None = typer.Option(None, "--size", help="frame size for token counts (default: input spec)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Show a backbone's parameters (total and per stage/block), input spec and token counts."""
    try:
        report = backbone_report(backbone, checkpoint, frames, size)
    except VpetlError as e:
        fail(e)
    report.pop("_model")
    if as_json:
        print_json(report)
        return
    console.print(f"[bold]{report['backbone']}[/] ({report['family']}): {report['parameters']:,} parameters, "
                  f"{report['num_features']}-d pooled feature, sha256 {report['sha256'][:12]}…")
    table = Table("component", "parameters", title="breakdown")
    for key, value in report["breakdown"].items():
        table.add_row(key, f"{value:,}")
    console.print(table)
    spec = report["input_spec"]
    console.print(f"input: {spec['num_frames']} frames ({spec['sampling']}, rate {spec['sampling_rate']}), "
                  f"{spec['size']}² crop, mean {spec['mean']}, std {spec['std']}")
    tokens = report["tokens"]
    console.print(f"tokens for {report['clip']['frames']}×{report['clip']['size']}²: grid {tokens['grid']}, "
                  f"{tokens['tokens']:,} tokens")
    for stage in tokens.get("stages", []):
        console.print(f"  stage {stage['stage']}: grid {stage['grid']}, window {stage['window']}, "
                      f"shift {stage['shift']}, {stage['windows_per_clip']} windows/clip")
