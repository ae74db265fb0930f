"""LRU of decoded adapters with a byte budget, keyed by (task, version).

Rules (DESIGN.md "Adapter store", issue [engine]):
- resident bytes never exceed the budget: an insert first evicts least-recently-used entries;
- an entry pinned by a running batch is never evicted (pins are counted, so overlapping batches are safe);
- validation and decoding happen before ``put`` and outside this lock, so loading one adapter never blocks
  batches of other tasks; the lock only guards the dictionary.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from vpetl.errors import Overloaded, TooLarge

V = TypeVar("V")
Key = Hashable


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    loads: int = 0
    evictions: int = 0


class ByteBudgetLRU(Generic[V]):
    """Thread-safe LRU whose entries each declare a size in bytes."""

    def __init__(self, budget_bytes: int, on_evict: Callable[[Key, V], None] | None = None) -> None:
        if budget_bytes <= 0:
            raise ValueError("budget_bytes must be positive")
        self.budget_bytes = budget_bytes
        self.on_evict = on_evict
        self.stats = CacheStats()
        self._entries: OrderedDict[Key, tuple[V, int]] = OrderedDict()
        self._pins: dict[Key, int] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def resident_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Key) -> bool:
        return key in self._entries

    def keys(self) -> list[Key]:
        with self._lock:
            return list(self._entries)

    def get(self, key: Key) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.stats.misses += 1
                return None
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return entry[0]

    def put(self, key: Key, value: V, nbytes: int) -> None:
        """Insert (or replace) ``key``; evict unpinned LRU entries until it fits.

        Raises:
            TooLarge: the entry alone exceeds the budget.
            Overloaded: pinned entries leave no room (a batch holds them); retry after it finishes.
        """
        if nbytes > self.budget_bytes:
            raise TooLarge(f"adapter of {nbytes:,} bytes exceeds the cache budget of {self.budget_bytes:,} bytes")
        evicted: list[tuple[Key, V]] = []
        with self._lock:
            if key in self._entries:
                self._bytes -= self._entries.pop(key)[1]
            for old in list(self._entries):
                if self._bytes + nbytes <= self.budget_bytes:
                    break
                if self._pins.get(old, 0):
                    continue
                value_old, size_old = self._entries.pop(old)
                self._bytes -= size_old
                self.stats.evictions += 1
                evicted.append((old, value_old))
            if self._bytes + nbytes > self.budget_bytes:
                raise Overloaded("adapter cache is full of adapters in use by running batches; retry shortly")
            self._entries[key] = (value, nbytes)
            self._bytes += nbytes
            self.stats.loads += 1
        for old, value_old in evicted:  # callbacks outside the lock
            if self.on_evict is not None:
                self.on_evict(old, value_old)

    def pin(self, keys: Iterable[Key]) -> None:
        with self._lock:
            for key in keys:
                self._pins[key] = self._pins.get(key, 0) + 1

    def unpin(self, keys: Iterable[Key]) -> None:
        with self._lock:
            for key in keys:
                left = self._pins.get(key, 0) - 1
                if left > 0:
                    self._pins[key] = left
                else:
                    self._pins.pop(key, None)

    def discard(self, key: Key) -> bool:
        """Drop ``key`` unless pinned (a stale version still finishing its batch is dropped on the next check)."""
        with self._lock:
            if key not in self._entries or self._pins.get(key, 0):
                return False
            value, size = self._entries.pop(key)
            self._bytes -= size
            self.stats.evictions += 1
        if self.on_evict is not None:
            self.on_evict(key, value)
        return True
