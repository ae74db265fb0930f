"""benchmarks/capacity.py at its CI size: the figures it prints obey what an LRU and consistent hashing must give."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "capacity.py"


def _run(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", *args], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def quick() -> dict:
    return _run()


def _cells(results: dict) -> dict[tuple[int, str, float | None], dict]:
    return {(r["replicas"], r["routing"], r["budget_mb"]): r for r in results["runs"]}


def test_counters_are_consistent(quick: dict) -> None:
    file_bytes, qps = quick["adapter"]["file_bytes"], quick["config"]["qps"]
    assert quick["load_cost"]["count"] > 0 and quick["load_cost"]["cpu_ms_median"] > 0
    for r in quick["runs"]:
        assert r["loads"] == r["misses"], r  # every miss went through bank.load, and only misses did
        assert r["hits"] + r["misses"] == r["requests"], r
        assert r["hit_rate"] == pytest.approx(r["hits"] / r["requests"])
        seconds = r["requests"] / qps
        assert r["cold_loads_per_s"] == pytest.approx(r["loads"] / seconds)
        assert r["mb_moved_per_s"] == pytest.approx(r["loads"] * file_bytes / seconds / 1e6)
        if r["budget_mb"] is None:
            assert r["evictions"] == 0, r
        else:
            assert r["warm"], r  # every cache was full before measuring: the LRUs were in their steady state
            assert r["evictions"] > 0 and r["resident_mb_max"] <= r["budget_mb"], r
            assert r["slots_per_replica"] == pytest.approx(r["budget_mb"] * 2**20 / quick["adapter"]["decoded_bytes"])


def test_hit_rate_rises_with_budget(quick: dict) -> None:
    cells = _cells(quick)
    budgets = sorted({r["budget_mb"] for r in quick["runs"] if r["budget_mb"] is not None}) + [None]
    assert len(budgets) >= 3
    for replicas, routing in {(r["replicas"], r["routing"]) for r in quick["runs"]}:
        rates = [cells[replicas, routing, b]["hit_rate"] for b in budgets]
        assert rates == sorted(rates) and rates[0] < rates[-1], (replicas, routing, rates)


def test_affinity_moves_fewer_bytes(quick: dict) -> None:
    cells = _cells(quick)
    replicas = sorted({r["replicas"] for r in quick["runs"]})
    assert replicas[-1] > 1
    for b in {r["budget_mb"] for r in quick["runs"]}:
        one = cells[1, "affinity", b]
        assert cells[1, "random", b]["hits"] == one["hits"]  # one replica: the policies route alike
        assert one["peak_load_ratio"] == pytest.approx(1.0)
        for n in replicas[1:]:
            aff, rnd = cells[n, "affinity", b], cells[n, "random", b]
            assert aff["mb_moved_per_s"] <= rnd["mb_moved_per_s"], (n, b)
            assert aff["hit_rate"] >= rnd["hit_rate"], (n, b)
        for n in replicas[1:]:  # and more replicas with affinity = more cache in total = fewer loads
            assert cells[n, "affinity", b]["loads"] <= one["loads"], (n, b)


def test_unbounded_cache_after_replay_warmup_always_hits() -> None:
    results = _run("--warmup", "replay", "--budget-mb", "inf")
    assert results["runs"]
    for r in results["runs"]:
        assert r["hit_rate"] == 1.0 and r["loads"] == 0 and r["warmup_requests"] == r["requests"], r
