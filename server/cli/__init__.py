"""The ``vpetl`` command (cloud side). Each sub-module registers its commands on ``app``.

Command modules import torch-heavy code lazily inside the command bodies so ``vpetl --help`` stays fast.
"""

from __future__ import annotations

from server.cli import backbone as _backbone  # noqa: F401  (registers `vpetl backbone …`)
from server.cli import bench as _bench  # noqa: F401  (registers `vpetl bench`)
from server.cli import data as _data  # noqa: F401  (registers `vpetl data …`)
from server.cli import inspect as _inspect  # noqa: F401  (registers `vpetl inspect`)
from server.cli import interop as _interop  # noqa: F401  (registers `vpetl export hf|peft`, `vpetl import peft`)
from server.cli import keys as _keys  # noqa: F401  (registers `vpetl keys …`, `vpetl audit`)
from server.cli import onnx as _onnx  # noqa: F401  (registers `vpetl export-onnx`)
from server.cli import serve as _serve  # noqa: F401  (registers `vpetl serve`)
from server.cli import train as _train  # noqa: F401  (registers `vpetl train`, `pretrain`, `experiment`)
from server.cli import up as _up  # noqa: F401  (registers `vpetl up`)
from server.cli import worker as _worker  # noqa: F401  (registers `vpetl worker`)
from server.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
