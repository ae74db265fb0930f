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
    quantize: str = typer.Option("fp32", "--quantize", help="fp32 | int8 (dynamic int8 weights, onnxruntime)"),
    adapter: Path | None = typer.Option(
        None, "--adapter", help="merge this adapter file in: a single-task graph whose only input is the clip"
    ),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Export BACKBONE for the edge: one graph, any adapter of FAMILY fed as inputs (dynamic batch and width);
    with --adapter, one task's graph with its adapter merged in; with --quantize int8, int8 weights."""
    import contextlib
    import json
    import tempfile
    import time

    import torch

    from vpetl.backbones import create_backbone
    from vpetl.formats.onnx import export_backbone_onnx
    from vpetl.formats.onnx_merge import export_merged_onnx
    from vpetl.formats.onnx_quant import check_quant, quantize_graph

    torch.set_num_threads(2)
    start = time.perf_counter()
    try:
        check_quant(quantize)
        model = create_backbone(backbone, checkpoint=checkpoint)
        what = f"{adapter.name} merged" if adapter else family
        status = console.status(f"exporting {backbone} ({what}) …") if not as_json else contextlib.nullcontext()
        with status, tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
            fp32 = out if quantize == "fp32" else Path(tmp) / "fp32.onnx"
            if adapter is not None:
                info = export_merged_onnx(model, adapter.read_bytes(), fp32)
                info.setdefault("max_abs_diff", None)
            else:
                info = export_backbone_onnx(
                    model, family, fp32, patt_positions=_slots(positions), lora_targets=_slots(targets),
                    mlp_mode=mlp_mode,
                )  # fmt: skip
            if quantize != "fp32":
                fp32_size = info["size"]
                info = {**info, **quantize_graph(fp32, out, quantize), "fp32_size": fp32_size}
    except VpetlError as e:
        fail(e)
    except OSError as e:
        fail(VpetlError(f"{e.strerror or e}: {getattr(e, 'filename', '') or ''}", code="io_error"))
    info["seconds"] = round(time.perf_counter() - start, 2)
    if as_json:
        print_json(info)
        return
    diff = info.get("max_abs_diff")
    console.print(
        f"[bold]{out}[/]: {info['size'] / 2**20:.1f} MiB, backbone {backbone} "
        f"(sha256 {info['backbone_sha256'][:12]}…), "
        + (f"task {info['merged_task']} merged ({info['merge']}), " if adapter else f"family {family}, ")
        + f"{len(json.loads(info['input_names']))} inputs, {quantize}"
        + (f" ({info['size'] / info['fp32_size']:.2f}× the fp32 graph)" if "fp32_size" in info else "")
        + (f", ORT vs torch max |diff| {diff:.1e}" if diff is not None else "")
        + f", {info['seconds']:.1f} s"
    )


def _slots(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())
