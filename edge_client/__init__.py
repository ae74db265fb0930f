"""vpetl edge client: HTTP SDK, onnxruntime runner, adapter cache and the ``vpetl-edge`` CLI. Never imports torch.

``Client`` (the SDK) and ``EdgeCache`` are imported here; ``Runner`` loads onnxruntime, so it is imported on first
use (``from edge_client import Runner`` or ``edge_client.runner``).
"""

from __future__ import annotations

from typing import Any

from edge_client.cache import EdgeCache, SyncReport
from edge_client.sdk import Client, ConnectionFailed

__all__ = ["Client", "ConnectionFailed", "EdgeCache", "Runner", "SyncReport"]


def __getattr__(name: str) -> Any:
    if name == "Runner":
        from edge_client.runner import Runner

        return Runner
    raise AttributeError(f"module 'edge_client' has no attribute {name!r}")
