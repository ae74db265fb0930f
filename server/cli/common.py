"""Helpers shared by the commands that load a backbone (serve, worker, up, train) and that run uvicorn."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def resolve_checkpoint(
    backbone: str, checkpoint: Path | None, data_dir: Path, *, progress: bool = True
) -> Path | None:
    """The checkpoint to load: the one given, else — for ``vpetl-demo`` — the cached pretrained demo backbone
    (pretrained on first use, a few minutes on 2 cores), else None (a seeded random init)."""
    if checkpoint is not None or backbone != "vpetl-demo":
        return checkpoint
    from training.pretrain import ensure_demo_backbone

    return ensure_demo_backbone(data_dir / "backbones", progress=progress)


def run_uvicorn(app: Any, *, on_ready: Callable[[], None] | None = None, **config: Any) -> None:
    """``uvicorn.run(app, **config)``, calling ``on_ready`` once the app's lifespan has started and the socket
    listens (the moment ``--json`` reports readiness: a client connecting after that line is served). With
    ``on_ready``, uvicorn's access log goes to stderr too: stdout then carries only the caller's JSON lines."""
    import copy

    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    if on_ready is not None and "log_config" not in config:
        log_config = copy.deepcopy(LOGGING_CONFIG)
        log_config["handlers"]["access"]["stream"] = "ext://sys.stderr"  # uvicorn's default is stdout
        config["log_config"] = log_config

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[Any] | None = None) -> None:
            await super().startup(sockets=sockets)
            if on_ready is not None and not self.should_exit:
                on_ready()

    _Server(uvicorn.Config(app, **config)).run()
