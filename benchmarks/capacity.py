"""Capacity benchmark: a Zipf request mix over many tasks replayed onto R predictor replicas' real adapter caches.

    python benchmarks/capacity.py [--tasks 10000] [--zipf 1.1] [--requests N] [--replicas 1,4,16]
        [--budget-mb 256,64] [--routing affinity,random,bounded] [--qps 1000] [--full] [--quick] [--json]

Each replica is a real :class:`vpetl.petl.bank.AdapterBank` (its byte-budget LRU, ``vpetl.petl.cache``), driven as
the predictor drives it (``server/predictor.py`` ``ensure_loaded``): ``bank.get(task, 1)``, and on a miss
``bank.load(task, 1, data)`` on real artifact bytes, i.e. the real validate → decode → byte accounting → eviction.
Only the Redis GET is left out (the bytes are in memory), so the load cost is the replica's CPU side of a cold load.

To afford 10,000 tasks, ``--artifacts`` distinct real artifacts (LoRA r=16 on q,v of the chosen backbone by
default: ViT-B sized, 2.4 MB) are made with the project's own ``vpetl.petl.io.adapter_bytes`` and task ``i`` is
served from artifact ``i % artifacts``; every task is still its own cache entry, decoded on each of its loads.
Replicas share the frozen weights (a deep copy whose parameters are the same tensors): the bank never runs a forward
here, and one ViT-B per replica would cost 16 × 344 MB for nothing.

Routing: ``affinity`` = a consistent-hash ring (64 virtual nodes per replica) picks a task's replica, what Ray
Serve's multiplexed-id routing approximates; ``random`` = a seeded uniform choice per request (no affinity);
``bounded`` = consistent hashing with bounded loads (a replica that took more than 1.25× its share of the last
``--window`` requests is skipped for the next one on the ring), i.e. affinity that spreads a hot task.

Warm-up (``--warmup stream``, the default): the requests before the measured ones in the same Zipf stream, played
until every replica's cache is full (at most ``--warmup-max``). With equal-sized entries an LRU then holds its last
C distinct tasks, which is its steady state, so the measured requests see what a long-running replica sees.
``--warmup replay`` plays the measured trace itself first (an unbounded cache then hits every measured request; it
overstates hit rates unless each replica's share of the trace is much longer than its cache's churn time).
Request ``i`` is at time ``i / qps``, so loads/s = measured loads × qps / requests. ``busy`` = measured CPU time of
the loads (``time.thread_time``) ÷ simulated seconds: the share of one replica's core that cold loads take.
"""

from __future__ import annotations

import argparse
import bisect
import copy
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vpetl.backbones import create_backbone  # noqa: E402
from vpetl.backbones.base import Backbone  # noqa: E402
from vpetl.petl import create_model  # noqa: E402
from vpetl.petl.bank import AdapterBank  # noqa: E402
from vpetl.petl.io import adapter_bytes  # noqa: E402
from vpetl.petl.registry import make_config  # noqa: E402

METHODS = {"lora": {"rank": 16, "targets": ("q", "v")}, "bapat": {"bottleneck": 128}}
ROUTINGS = ("affinity", "random", "bounded")
VNODES = 64  # virtual nodes per replica on the ring: max/mean keys per replica ≈ 1.2 at R = 16
BOUND = 1.25  # bounded-load factor (Mirrokni et al.: c = 1.25 keeps most keys on their first choice)
INF = float("inf")


def shared_copy(backbone: Backbone) -> Backbone:
    """A new module tree over the same parameter tensors (each bank hooks its own blocks; weights are shared)."""
    memo: dict[int, object] = {id(t): t for t in [*backbone.parameters(), *backbone.buffers()]}
    return copy.deepcopy(backbone, memo)


def make_artifacts(backbone: Backbone, method: str, n: int, classes: int = 10) -> list[bytes]:
    """``n`` real adapter files of one method, distinct weights (so each load decodes different bytes)."""
    model = create_model(shared_copy(backbone), make_config(method, **METHODS[method]), classes, share_backbone=True)
    out = []
    for i in range(n):
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, p in model.trainable_state_dict().items():
                if not name.startswith("backbone."):
                    p.copy_(0.02 * torch.randn(p.shape, generator=gen))
        out.append(adapter_bytes(model.eval(), task=f"artifact{i}", labels=[f"c{j}" for j in range(classes)]))
    return out


def zipf_trace(tasks: int, s: float, n: int, seed: int) -> np.ndarray:
    """``n`` task indices, P(task k) ∝ (k + 1)^-s (task 0 the hottest)."""
    p = np.arange(1, tasks + 1, dtype=np.float64) ** -s
    return np.random.default_rng(seed).choice(tasks, size=n, p=p / p.sum())


def _point(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class Ring:
    """Consistent-hash ring over ``replicas`` replicas; ``order(task)`` = distinct replicas clockwise from it."""

    def __init__(self, replicas: int) -> None:
        pairs = sorted((_point(f"replica-{r}#{v}"), r) for r in range(replicas) for v in range(VNODES))
        self.points = [p for p, _ in pairs]
        self.owners = [r for _, r in pairs]
        self.replicas = replicas

    def order(self, task: str) -> list[int]:
        i = bisect.bisect(self.points, _point(task))
        seen: dict[int, None] = {}
        for j in range(len(self.points)):
            seen.setdefault(self.owners[(i + j) % len(self.points)], None)
            if len(seen) == self.replicas:
                break
        return list(seen)


@dataclass
class Run:
    """One (replicas, routing, budget) cell, measured pass only."""

    replicas: int
    routing: str
    budget_mb: float | None  # None: no cap (JSON has no infinity)
    slots_per_replica: float | None  # budget ÷ one decoded adapter's bytes
    requests: int
    warmup_requests: int = 0
    warm: bool = False  # every cache full when measuring started (always False without a cap)
    hits: int = 0
    misses: int = 0
    loads: int = 0  # the caches' own counters (ByteBudgetLRU.stats), not the simulation's
    evictions: int = 0
    hit_rate: float = 0.0
    cold_loads_per_s: float = 0.0
    mb_moved_per_s: float = 0.0  # artifact bytes fetched per second, all replicas (MB = 10^6 B)
    peak_load_ratio: float = 0.0  # busiest replica's requests ÷ the mean: what affinity costs in balance
    peak_replica_qps: float = 0.0  # requests/s the busiest replica must serve
    resident_mb_max: float = 0.0  # the fullest cache's resident bytes at the end (≤ the budget, by the LRU's rule)
    busy_mean: float = 0.0  # cold-load CPU seconds per simulated second, mean replica
    busy_max: float = 0.0  # … busiest replica
    load_cpu_ms: list[float] = field(default_factory=list, repr=False)


def simulate(
    trace: np.ndarray, requests: int, replay: bool, names: list[str], artifacts: list[bytes], backbone: Backbone,
    replicas: int, routing: str, budget_mb: float, qps: float, seed: int, window: int, nbytes: int,
) -> Run:  # fmt: skip
    """One cell. ``trace`` holds the warm-up stream then the measured requests (``replay``: only the latter)."""
    unbounded = math.isinf(budget_mb)
    budget = 1 << 50 if unbounded else int(budget_mb * 2**20)
    banks = [AdapterBank(shared_copy(backbone), budget_bytes=budget) for _ in range(replicas)]
    ring = Ring(replicas)
    orders = {int(t): ring.order(names[t]) for t in np.unique(trace)}
    chosen = np.random.default_rng(seed + 1).integers(replicas, size=len(trace))  # random routing, per position
    recent: deque[int] = deque()
    counts = [0] * replicas
    cap = max(1, math.ceil(BOUND * window / replicas))
    cpu, served, moved, times = [0.0] * replicas, [0] * replicas, 0, []

    def step(i: int) -> None:
        nonlocal moved
        t = int(trace[i])
        if routing == "random":
            r = int(chosen[i])
        elif routing == "affinity":
            r = orders[t][0]
        else:  # bounded: the first replica on the task's ring walk under its share of the recent window
            r = next((x for x in orders[t] if counts[x] < cap), orders[t][0])
            recent.append(r)
            counts[r] += 1
            if len(recent) > window:
                counts[recent.popleft()] -= 1
        served[r] += 1
        bank = banks[r]
        if bank.get(names[t], 1) is None:  # the predictor's path (ensure_loaded): get, then load on a miss
            data = artifacts[t % len(artifacts)]
            c0 = time.thread_time()
            bank.load(names[t], 1, data)
            dt = time.thread_time() - c0
            cpu[r] += dt
            moved += len(data)
            times.append(1000 * dt)

    def full() -> bool:  # an LRU holding its last C distinct tasks is in its steady state from then on
        return all(b.cache.resident_bytes + nbytes > b.cache.budget_bytes for b in banks)

    if replay:  # the measured trace itself fills the caches: an unbounded cache then hits every request
        for i in range(requests):
            step(i)
        first = 0
    else:  # a prefix of the same stream, until every cache is full (at most len(trace) - requests)
        first = 0
        while first < len(trace) - requests and not (first % 50 == 0 and full()):
            step(first)
            first += 1
    warm = full()
    before = [asdict(b.cache.stats) for b in banks]
    cpu, served, moved, times = [0.0] * replicas, [0] * replicas, 0, []
    for i in range(first, first + requests):
        step(i)
    run = Run(replicas, routing, None if unbounded else budget_mb, None if unbounded else budget / nbytes, requests)
    run.warmup_requests, run.warm = requests if replay else first, warm
    for b, old in zip(banks, before, strict=True):
        new = asdict(b.cache.stats)
        run.hits += new["hits"] - old["hits"]
        run.misses += new["misses"] - old["misses"]
        run.loads += new["loads"] - old["loads"]
        run.evictions += new["evictions"] - old["evictions"]
    seconds = requests / qps
    run.hit_rate = run.hits / requests
    run.cold_loads_per_s = run.loads / seconds
    run.mb_moved_per_s = moved / seconds / 1e6
    run.peak_load_ratio = max(served) * replicas / requests
    run.peak_replica_qps = max(served) / seconds
    run.resident_mb_max = max(b.cache.resident_bytes for b in banks) / 2**20
    run.busy_mean = sum(cpu) / replicas / seconds
    run.busy_max = max(cpu) / seconds
    run.load_cpu_ms = times
    return run


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    backbone = create_backbone(args.backbone).eval()
    t0 = time.perf_counter()
    artifacts = make_artifacts(backbone, args.method, args.artifacts)
    make_s = time.perf_counter() - t0
    nbytes = AdapterBank(shared_copy(backbone)).decode("probe", 1, artifacts[0]).nbytes  # what the cache charges
    names = [f"task-{i:05d}" for i in range(args.tasks)]
    replay = args.warmup == "replay"
    warmup_max = 0 if replay else args.warmup_max or 2 * args.requests
    trace = zipf_trace(args.tasks, args.zipf, warmup_max + args.requests, args.seed)
    runs: list[Run] = []
    started = time.perf_counter()
    for replicas in args.replicas:
        for budget in args.budget_mb:
            for routing in args.routing:
                if replicas == 1 and routing != "affinity" and len(args.routing) > 1 and not args.all_cells:
                    continue  # one replica: every policy routes alike (kept with --all-cells, as the test checks)
                runs.append(simulate(trace, args.requests, replay, names, artifacts, backbone, replicas, routing,
                                     budget, args.qps, args.seed, args.window, nbytes))  # fmt: skip
    loads = [ms for r in runs for ms in r.load_cpu_ms]
    distinct = len(np.unique(trace))
    p = np.arange(1, args.tasks + 1, dtype=np.float64) ** -args.zipf
    return {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_average": os.getloadavg()[0],
        },
        "config": {
            "backbone": args.backbone,
            "method": args.method,
            "options": METHODS[args.method],
            "artifacts": args.artifacts,
            "tasks": args.tasks,
            "zipf": args.zipf,
            "requests": args.requests,
            "distinct_tasks_in_trace": distinct,
            "hottest_task_share": float(p[0] / p.sum()),
            "qps": args.qps,
            "simulated_s": args.requests / args.qps,
            "window": args.window,
            "seed": args.seed,
        },  # fmt: skip
        "adapter": {"file_bytes": len(artifacts[0]), "decoded_bytes": nbytes, "make_s": make_s},
        "load_cost": {
            "count": len(loads),
            "cpu_ms_median": statistics.median(loads) if loads else None,
            "cpu_ms_p99": float(np.percentile(loads, 99)) if loads else None,
        },
        "runs": [{k: v for k, v in asdict(r).items() if k != "load_cpu_ms"} for r in runs],
        "wall_s": time.perf_counter() - started,
    }


def report(results: dict) -> str:
    c, lc = results["config"], results["load_cost"]
    lines = [
        f"machine: {results['machine']}",
        f"config: {c}",
        f"adapter file: {results['adapter']['file_bytes'] / 1e6:.2f} MB ({c['method']} {c['options']}); "
        f"cold load CPU median {lc['cpu_ms_median'] or 0:.2f} ms, p99 {lc['cpu_ms_p99'] or 0:.2f} ms "
        f"(n={lc['count']}); hottest task {100 * c['hottest_task_share']:.1f}% of requests",
        "",
        f"{'R':>3} {'routing':>8} {'budget MiB':>10} {'slots':>6} {'hit rate':>8} {'loads/s':>8} {'MB/s':>7} "
        f"{'peak/mean':>9} {'peak req/s':>10} {'busy mean':>9} {'busy max':>8}",
    ]
    for r in results["runs"]:
        lines.append(
            f"{r['replicas']:>3} {r['routing']:>8} {r['budget_mb'] or INF:>10g} {r['slots_per_replica'] or INF:>6.0f} "
            f"{r['hit_rate']:>8.4f} {r['cold_loads_per_s']:>8.1f} {r['mb_moved_per_s']:>7.1f} "
            f"{r['peak_load_ratio']:>9.2f} {r['peak_replica_qps']:>10.0f} {100 * r['busy_mean']:>8.2f}% "
            f"{100 * r['busy_max']:>7.2f}%{'' if r['warm'] or r['budget_mb'] is None else '  (*)'}"
        )
    if any(not r["warm"] and r["budget_mb"] is not None for r in results["runs"]):
        lines.append("(*) some cache was not yet full when measuring began (raise --warmup-max)")
    lines.append(
        "busy = cold-load CPU ÷ simulated time (one core per replica); peak req/s = the busiest replica's share"
    )
    lines.append(f"{results['wall_s']:.1f} s for the simulation")
    return "\n".join(lines)


def _floats(text: str) -> list[float]:
    return [INF if x.strip().lower() in ("inf", "0") else float(x) for x in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="videomae-b")
    parser.add_argument("--method", choices=sorted(METHODS), default="lora")
    parser.add_argument("--artifacts", type=int, default=16, help="distinct real adapter files behind the tasks")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--requests", type=int, default=None, help="measured requests (default 4,000; --full 15,000)")
    parser.add_argument("--replicas", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16])
    parser.add_argument("--budget-mb", type=_floats, default=[256.0, 64.0], help="per replica, MiB; 'inf' = no cap")
    parser.add_argument("--routing", type=lambda s: s.split(","), default=["affinity", "random"])
    parser.add_argument("--qps", type=float, default=1000.0, help="offered requests/s (request i at i/qps)")
    parser.add_argument(
        "--warmup",
        choices=("stream", "replay"),
        default="stream",
        help="stream: the stream's prefix until every cache is full; replay: the measured trace",
    )
    parser.add_argument("--warmup-max", type=int, default=None, help="stream warm-up cap (default: 2 × --requests)")
    parser.add_argument("--window", type=int, default=1000, help="bounded routing: requests in the load window")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a replica's decode is one thread)")
    parser.add_argument("--all-cells", action="store_true", help="also run R=1 under every routing policy")
    parser.add_argument("--full", action="store_true", help="15,000 requests, routing affinity,random,bounded")
    parser.add_argument("--quick", action="store_true", help="seconds, for CI: videomae-tiny, 2,000 tasks, 3,000 "
                        "requests, R=1,4, budgets 0.25, 1 MiB and none, every cell")  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if bad := [r for r in args.routing if r not in ROUTINGS]:
        parser.error(f"unknown routing {bad[0]!r}; choose from {', '.join(ROUTINGS)}")
    if args.quick:  # explicit flags still win where given (only the defaults are swapped)
        defaults = {"backbone": "videomae-b", "tasks": 10_000, "replicas": [1, 4, 16], "budget_mb": [256.0, 64.0]}
        quick = {"backbone": "videomae-tiny", "tasks": 2000, "replicas": [1, 4], "budget_mb": [0.25, 1.0, INF]}
        for k, v in quick.items():
            if getattr(args, k) == defaults[k]:
                setattr(args, k, v)
        args.requests = args.requests or 3000
        args.all_cells = True
    if args.full:
        args.requests = args.requests or 15_000
        if args.routing == ["affinity", "random"]:
            args.routing = list(ROUTINGS)
    args.requests = args.requests or 4000
    results = run(args)
    print(json.dumps(results, indent=2) if args.json else report(results))


if __name__ == "__main__":
    main()
