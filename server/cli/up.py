"""``vpetl up``: the one-command main job (embedded Redis, demo backbone and tasks, local engine)."""

from __future__ import annotations

from server.cli.app import app, console


@app.command()
def up() -> None:
    """Start vpetl with everything embedded: Redis, the demo backbone, two demo tasks, the local engine."""
    console.print(
        "[bold]vpetl up[/]: the serving stack (embedded Redis, demo backbone, demo tasks, HTTP API) "
        "is not built yet.\n"
        "What works today: [cyan]vpetl inspect --backbone swin3d-b --json[/] and [cyan]vpetl data synth --help[/]."
    )
