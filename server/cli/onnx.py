"""``vpetl export-onnx``: the frozen backbone as one ONNX graph whose adapter weights are graph inputs (edge)."""

from __future__ import annotations

from pathlib import Path

import typer

from server.cli.app import app, console, fail, print_json
from vpetl.errors import VpetlError

FAMILY_HELP = "adapter family the graph takes: bapat | patt | adaptmlp | lora | linear"


@app.command("export-onnx")
def export_onnx(
    backbone: str = typer.Option(..., "--backbone", "-b", help="backbone name, e.g. vpetl-demo, videomae-b"),
    family: str = typer.Option("bapat", "--family", "-f", help=FAMILY_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="output .onnx file (written atomically)"),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="backbone weights to load strictly"),
    positions: str = typer.Option("q,k,v", help="PATT slots the graph takes (any adapter's positions must fit)"),
    targets: str = typer.Option("q,k,v", help="LoRA targets the graph takes"),
    mlp_mode: str = typer.Option("parallel", help="AdaptMLP mode the graph runs: parallel | sequential"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Export BACKBONE for the edge: one graph, any adapter of FAMILY fed as inputs (dynamic batch and width)."""
    import contextlib
    import json
    import time

    import torch

    from vpetl.backbones import create_backbone
    from vpetl.formats.onnx import export_backbone_onnx

    torch.set_num_threads(2)
    start = time.perf_counter()
    try:
        model = create_backbone(backbone, checkpoint=checkpoint)
        status = console.status(f"exporting {backbone} ({family}) …") if not as_json else contextlib.nullcontext()
        with status:
            info = export_backbone_onnx(
                model, family, out, patt_positions=_slots(positions), lora_targets=_slots(targets), mlp_mode=mlp_mode
            )
    except VpetlError as e:
        fail(e)
    info["seconds"] = round(time.perf_counter() - start, 2)
    if as_json:
        print_json(info)
        return
    console.print(
        f"[bold]{out}[/]: {info['size'] / 2**20:.1f} MiB, backbone {backbone} "
        f"(sha256 {info['backbone_sha256'][:12]}…), "
        f"family {family}, {len(json.loads(info['input_names']))} inputs, ORT vs torch max |diff| "
        f"{info['max_abs_diff']:.1e}, {info['seconds']:.1f} s"
    )


def _slots(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())
