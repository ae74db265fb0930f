"""``vpetl data …``: synthetic datasets (registered by the data module)."""

from __future__ import annotations

import typer

from server.cli.app import app

data_app = typer.Typer(help="Datasets: write synthetic action datasets as real mp4 files.", no_args_is_help=True)
app.add_typer(data_app, name="data")
