"""``vpetl data …``: synthetic datasets (registered by the data module)."""

from __future__ import annotations

import typer

from server.cli.app import app, console, fail, print_json

data_app = typer.Typer(help="Datasets: write synthetic action datasets as real mp4 files.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("synth")
def synth(
    preset: str = typer.Option(..., "--preset", "-p", help="source | temporal | order | appearance"),
    out: str = typer.Option(..., "--out", "-o", help="output directory (created; must be empty unless --overwrite)"),
    clips_per_class: int = typer.Option(40, "--clips-per-class", "-n", min=1, help="clips per class"),
    seed: int = typer.Option(0, "--seed", help="same seed, same frames"),
    size: int = typer.Option(128, "--size", min=32, help="frame side in pixels (even)"),
    val_fraction: float = typer.Option(0.2, "--val-fraction", min=0.0, max=0.95, help="share of clips in val.txt"),
    workers: int = typer.Option(0, "--workers", min=0, help="render processes (0: up to 2)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="write into a non-empty directory"),
    scenes: str = typer.Option(
        "", "--scenes", help="busy | clean (default: the preset's own: clean for source, busy for the others)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON, no progress bar"),
) -> None:
    """Write a synthetic action dataset as real mp4 files (folder layout with train.txt / val.txt)."""
    import json
    import time
    from pathlib import Path

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from vpetl.data.synth import PRESETS, SCENES, synthesize
    from vpetl.errors import DatasetError

    if preset not in PRESETS:
        fail(DatasetError(f"unknown preset {preset!r}: choose from {', '.join(PRESETS)}"))
    if scenes and scenes not in SCENES:
        fail(DatasetError(f"unknown scenes {scenes!r}: choose from {', '.join(SCENES)}"))
    show = not as_json and console.is_terminal
    manifest_file = Path(out) / "dataset.json"
    before = manifest_file.stat().st_mtime_ns if manifest_file.is_file() else None
    started = time.perf_counter()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, disable=not show, transient=True) as bar:
        task = bar.add_task(f"synth {preset}", total=clips_per_class * len(PRESETS[preset].classes))
        try:
            path = synthesize(preset, out, clips_per_class, seed, size, val_fraction=val_fraction,
                              workers=workers or None, overwrite=overwrite, scenes=scenes or None,
                              progress=lambda done, total: bar.update(task, completed=done))
        except DatasetError as exc:
            fail(exc)
    elapsed = time.perf_counter() - started
    manifest = json.loads((Path(path) / "dataset.json").read_text())
    manifest["path"] = str(path)
    manifest["reused"] = before is not None and before == manifest_file.stat().st_mtime_ns
    if as_json:
        print_json(manifest)
        return
    counts = manifest["counts"]
    verb = "[yellow]already there (same parameters):[/]" if manifest["reused"] else "[green]wrote[/]"
    console.print(f"{verb} {counts['total']} clips ({counts['train']} train, {counts['val']} val) of "
                  f"{len(manifest['classes'])} classes to [bold]{path}[/] in {elapsed:.1f}s")
    console.print("classes: " + ", ".join(manifest["classes"]))
