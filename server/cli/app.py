"""The root typer app and helpers shared by the command modules."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NoReturn, TextIO

import typer
from rich.console import Console
from rich.markup import escape

from vpetl.errors import VpetlError

app = typer.Typer(
    name="vpetl",
    help="vpetl (cloud side): one frozen video transformer, many parameter-efficient task adapters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

console = Console()
err_console = Console(stderr=True)


def print_json(payload: Any) -> None:
    """Machine-readable output for ``--json`` (plain stdout, no rich markup)."""
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


_json_out: list[TextIO] = []  # the real stdout once reserve_stdout_for_json ran


def reserve_stdout_for_json() -> None:
    """Keep stdout for :func:`print_json_line` alone: file descriptor 1 becomes a copy of stderr for everything
    else — this process's prints and logs, uvicorn's access log, and child processes such as Ray's raylet, which
    write to the inherited descriptor, not to ``sys.stdout``."""
    if _json_out:
        return
    sys.stdout.flush()
    _json_out.append(os.fdopen(os.dup(1), "w", buffering=1))
    os.dup2(2, 1)


def print_json_line(payload: Any) -> None:
    """One event of a long-running command's ``--json`` stream (``serve``, ``worker``, ``up``): one compact JSON
    object per line on stdout, flushed at once so a supervisor reading the pipe sees it when it happens."""
    out = _json_out[0] if _json_out else sys.stdout
    out.write(json.dumps(payload, default=str, separators=(",", ":")) + "\n")
    out.flush()


def fail(error: VpetlError | str, exit_code: int = 2) -> NoReturn:
    """Print a one-line error that says what to do, then exit non-zero (no traceback for user errors)."""
    if isinstance(error, VpetlError):
        err_console.print(f"[bold red]error[/] {escape('[' + error.code + ']')}: {escape(error.message)}")
    else:
        err_console.print(f"[bold red]error[/]: {escape(str(error))}")
    raise typer.Exit(exit_code)
