"""``vpetl backbone show|register|unregister``: the deployment's backbone identity in Redis.

Every server, Ray replica and worker loads the registered backbone (``vpetl.backbones.identity``); ``register``
is how an operator puts one there before ``serve deploy`` / KubeRay, from a node that has the checkpoint file.
"""

from __future__ import annotations

from pathlib import Path

import typer

from server.cli.app import app, console, fail, print_json
from vpetl.errors import VpetlError

backbone_app = typer.Typer(help="The deployment's registered backbone (name, sha256, input spec, weights in Redis).",
                           no_args_is_help=True)  # fmt: skip
app.add_typer(backbone_app, name="backbone")

RedisOption = typer.Option(..., "--redis-url", envvar="VPETL_REDIS_URL", help="the deployment's Redis")


def _registry(redis_url: str):  # noqa: ANN202  (lazy imports keep `vpetl --help` fast)
    from vpetl.store.adapters import redis_client
    from vpetl.store.backbones import BackboneRegistry

    return BackboneRegistry(redis_client(redis_url))


def _show(record, as_json: bool) -> None:  # noqa: ANN001
    if as_json:
        print_json(record.model_dump(mode="json") if record is not None else None)
    elif record is None:
        console.print("no backbone is registered")
    else:
        spec = record.input_spec
        console.print(
            f"[bold]{record.name}[/] sha256 {record.sha256}\n  {record.parameters:,} parameters, input "
            f"{spec.num_frames}×{spec.size}², weights: {record.weights}"
            + (f" ({record.weights_size / 1e6:.1f} MB in {record.chunks} chunks)" if record.weights == "blob" else "")
            + f", from {record.source}",
            soft_wrap=True,
        )


@backbone_app.command("show")
def show(redis_url: str = RedisOption, as_json: bool = typer.Option(False, "--json")) -> None:
    """Print the registered backbone (or say none is)."""
    registry = _registry(redis_url)
    try:
        _show(registry.get(), as_json)
    finally:
        registry.redis.close()


@backbone_app.command("register")
def register(
    redis_url: str = RedisOption,
    backbone: str = typer.Option("vpetl-demo", "--backbone", envvar="VPETL_BACKBONE", help="backbone name"),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", envvar="VPETL_CHECKPOINT",
        help="weights to register (default: vpetl-demo's pretrained file, built on first use; others: seeded init)",
    ),  # fmt: skip
    data_dir: Path = typer.Option(Path(".vpetl"), "--data-dir", envvar="VPETL_DATA_DIR"),
    frames: int | None = typer.Option(None, "--frames", min=1, help="serve at this many frames (default: the "
                                      "backbone's own input spec)"),
    size: int | None = typer.Option(None, "--size", min=8, help="serve at this crop size, e.g. 112"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Register the deployment's backbone (weights go into Redis). Refuses if another one is registered.
    ``--frames/--size`` serve it at a reduced clip (every replica and worker then uses that input spec)."""
    from server.cli.common import resolve_checkpoint
    from vpetl.backbones import create_backbone
    from vpetl.backbones.identity import resolve_backbone

    registry = _registry(redis_url)
    try:
        ckpt = resolve_checkpoint(backbone, checkpoint, data_dir, progress=not as_json)
        spec = None
        if frames is not None or size is not None:
            default = create_backbone(backbone).input_spec
            update = {"num_frames": frames or default.num_frames, "size": size or default.size}
            spec = default.model_copy(update=update)
        _, record = resolve_backbone(backbone, ckpt, registry, data_dir / "backbones", input_spec=spec)
        _show(record, as_json)
    except VpetlError as e:
        fail(e)
    finally:
        registry.redis.close()


@backbone_app.command("unregister")
def unregister(
    redis_url: str = RedisOption,
    yes: bool = typer.Option(False, "--yes", help="really: servers and workers then refuse to start until a new "
                             "backbone is registered, and adapters trained on the old one are refused"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Remove the registered backbone and its weights from Redis (adapters stay; they name their backbone)."""
    if not yes:
        fail("unregistering changes which adapters the deployment accepts: pass --yes to confirm")
    registry = _registry(redis_url)
    try:
        record = registry.unregister()
    finally:
        registry.redis.close()
    if as_json:
        print_json({"removed": record.model_dump(mode="json") if record is not None else None})
    else:
        console.print("nothing was registered" if record is None else f"removed {record.name} ({record.sha256[:12]}…)")
