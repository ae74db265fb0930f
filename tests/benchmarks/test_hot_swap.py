"""benchmarks/hot_swap.py's rule for "a version is served": by every live replica, the killed one excluded."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType


def test_a_swap_counts_once_the_last_live_replica_answers_the_new_version(
    load_benchmark: Callable[[str], ModuleType],
) -> None:
    hs = load_benchmark("hot_swap")
    # (sent, received, version, sha256, status, replica)
    log = [(0.0, 1.0, 1, "", 200, "a"), (0.0, 1.1, 1, "", 200, "b"), (1.2, 1.3, 2, "", 200, "a"),
           (1.2, 1.4, 1, "", 200, "b"), (1.5, 1.6, 2, "", 200, "b"), (1.6, 1.7, 2, "", 200, "a")]  # fmt: skip
    assert hs._live_replicas(log, 0.9) == {"a", "b"}
    assert hs._live_replicas(log, 1.5) == {"a", "b"} and hs._live_replicas(log, 1.65) == {"a"}
    assert hs._served_everywhere(log, 2, {"a", "b"}) == 1.6  # b switched last
    assert hs._served_everywhere(log, 2, {"a"}) == 1.3
    assert hs._served_everywhere(log, 2, {"a", "b", "dead"}) is None  # a replica that never answers
    assert hs._served_everywhere(log, 3, {"a"}) is None
