"""``vpetl bench NAME [ARGS…]``: run a benchmark script from ``benchmarks/`` (``all`` runs each at its small size)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer

from server.cli.app import app, console, fail

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def available() -> list[str]:
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if not p.stem.startswith("_"))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="benchmark name (a file in benchmarks/), or 'all'"),
) -> None:
    """Run a benchmark (figures go to BENCHMARKS.md by hand, with the command and machine). Extra args pass through,
    e.g. ``vpetl bench engine --full --json``."""
    if not BENCH_DIR.is_dir():
        fail("benchmarks/ not found: run `vpetl bench` from a source checkout")
    names = available() if name == "all" else [name]
    unknown = [n for n in names if n not in available()]
    if unknown:
        fail(f"unknown benchmark {unknown[0]!r}; choose one of: {', '.join(available())}, all")
    failed = []
    for n in names:
        console.rule(f"benchmarks/{n}.py")
        rc = subprocess.call([sys.executable, str(BENCH_DIR / f"{n}.py"), *ctx.args])
        if rc:
            failed.append(n)
    if failed:
        fail(f"benchmark(s) failed: {', '.join(failed)}", exit_code=1)
