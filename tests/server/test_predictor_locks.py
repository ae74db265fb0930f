"""``Predictor.ensure_loaded`` must not keep a load lock per unknown ``?version=N`` (a client cycling through
version numbers would grow the lock table without bound)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from server.predictor import Predictor
from vpetl.errors import UnknownVersion


class _Store:
    def __init__(self) -> None:
        self.byte_reads = 0

    async def get_record(self, task: str, version: int | None = None) -> Any:
        raise UnknownVersion(f"task {task!r} has no version {version}")

    async def get_bytes(self, task: str, version: int | None = None) -> Any:
        self.byte_reads += 1
        raise AssertionError("an unknown version must be refused before its bytes are read")


def test_unknown_versions_leave_no_lock_behind() -> None:
    predictor = Predictor.__new__(Predictor)  # only what ensure_loaded touches
    predictor.bank = SimpleNamespace(get=lambda task, version: None)  # type: ignore[assignment]
    store = _Store()
    predictor.store = store  # type: ignore[assignment]
    predictor._load_locks = {}

    async def main() -> None:
        for version in range(1, 200):
            with pytest.raises(UnknownVersion):
                await predictor.ensure_loaded("demo", version)

    asyncio.run(main())
    assert predictor._load_locks == {} and store.byte_reads == 0
