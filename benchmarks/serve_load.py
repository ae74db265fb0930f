"""Serving under load: the mixed-task micro-batcher vs the stock-Serve baseline (batches split by task), over HTTP.

Closed loop: C clients each send the next ``POST /predict`` as soon as the previous one returns, the task of each
request drawn from a Zipf(α) mix over N published adapters (bapat, one seed per task). Per arm — engine × batch
policy (``mixed``: one forward per collected batch; ``per-task``: one forward per task in it, what
``@serve.batch`` + multiplexing does) — it reports throughput, p50/p99 latency, the mean collected batch (from the
``vpetl_batch_size`` histogram on ``/metrics``; the Ray ingress does not see it) and the mean clips per backbone
forward (from the responses: clips of one forward share its ``timing_ms.model``), plus the HTTP overhead at batch 1
(end-to-end latency of one sequential request ÷ its ``timing_ms.model``, median of 30).

The two local servers run side by side and the rounds alternate their order (A B, B A, …), so their ratio is
measured in the same run; a Ray arm needs its own Ray instance, so Ray arms run one after another.

Run: ``python benchmarks/serve_load.py [--backbone videomae-tiny] [--tasks 20] [--zipf 1.0] [--concurrency 16]
[--duration 15] [--engines local,ray] [--full] [--json]``. It starts its own redis-server and ``vpetl serve``
processes (``--max-wait-ms 10 --max-batch-size 8 --max-queue 256``); the default size (4 arms: local and Ray, each
mixed and per-task) takes about 3 minutes on 2 cores. ``--full``: 60 s per arm in 5 rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import ServeProcess, make_adapter, make_clip  # noqa: E402

POLICIES = ("mixed", "per-task")
LABELS = [f"class{i}" for i in range(10)]
LEAD_S = 1.0  # each segment's unmeasured lead-in (the closed loop reaches its steady state)
CLUSTER_GAP_S = 0.05  # responses of one forward arrive within this of each other


# ------------------------------------------------------------------------------------------------- records
@dataclass
class Record:
    """One request as the client saw it."""

    sent: float
    recv: float
    status: int  # 0: transport error
    model_ms: float | None = None
    queue_ms: float | None = None
    decode_ms: float | None = None


@dataclass
class Segment:
    """One arm's measured window in one round."""

    round: int
    seconds: float
    done: list[Record]  # requests sent and answered inside the window
    completed: int  # 200s answered inside the window (throughput)
    errors: int
    batch_sum: float | None  # deltas of the vpetl_batch_size histogram over the window (None: not exposed)
    batch_count: float | None

    @property
    def rps(self) -> float:
        return self.completed / self.seconds


@dataclass
class Arm:
    """An engine × batch policy, its server and what was measured on it."""

    engine: str
    policy: str
    server: ServeProcess | None = None
    segments: list[Segment] = field(default_factory=list)
    overhead: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.engine}/{self.policy}"


# ------------------------------------------------------------------------------------------------- traffic
def zipf_weights(n: int, alpha: float) -> list[float]:
    """P(task k) ∝ 1 / k^α for k = 1..n (α = 0: uniform)."""
    raw = [1.0 / (k**alpha) for k in range(1, n + 1)]
    total = sum(raw)
    return [w / total for w in raw]


def expected_distinct(weights: Sequence[float], batch: int) -> float:
    """Expected number of distinct tasks among ``batch`` independent draws: forwards per full per-task batch."""
    return sum(1.0 - (1.0 - p) ** batch for p in weights)


def task_names(n: int) -> list[str]:
    return [f"task{k:02d}" for k in range(1, n + 1)]


async def _post(client: httpx.AsyncClient, clip: bytes, task: str) -> Record:
    sent = time.perf_counter()
    try:
        r = await client.post("/predict", params={"task": task}, content=clip, headers={"content-type": "video/mp4"})
    except httpx.HTTPError:
        return Record(sent, time.perf_counter(), 0)
    recv = time.perf_counter()
    if r.status_code != 200:
        return Record(sent, recv, r.status_code)
    timing = r.json()["timing_ms"]
    return Record(sent, recv, 200, timing.get("model"), timing.get("queue"), timing.get("decode"))


async def _batch_histogram(client: httpx.AsyncClient) -> tuple[float | None, float | None]:
    """(sum, count) of ``vpetl_batch_size`` on ``/metrics``; (None, None) where the histogram is empty (Ray
    ingress: the batches happen in the predictor replicas)."""
    try:
        text = (await client.get("/metrics")).text
    except httpx.HTTPError:
        return None, None
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("vpetl_batch_size_sum", "vpetl_batch_size_count"):
            values[name] = float(value)
    if not values.get("vpetl_batch_size_count"):
        return None, None
    return values["vpetl_batch_size_sum"], values["vpetl_batch_size_count"]


async def closed_loop(
    base: str, clip: bytes, tasks: Sequence[str], weights: Sequence[float], concurrency: int, seconds: float,
    round_index: int,
) -> Segment:  # fmt: skip
    """``concurrency`` clients for ``LEAD_S + seconds``; the window is the last ``seconds``. Client i of round r
    draws its tasks from ``Random(1000 r + i)``, so every arm of a round sees the same task sequences."""
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        records: list[Record] = []
        stop = asyncio.Event()

        async def one_client(i: int) -> None:
            rng = random.Random(1000 * round_index + i)
            while not stop.is_set():
                records.append(await _post(client, clip, rng.choices(tasks, weights=weights)[0]))

        clients = [asyncio.create_task(one_client(i)) for i in range(concurrency)]
        await asyncio.sleep(LEAD_S)
        start = time.perf_counter()
        before = await _batch_histogram(client)
        await asyncio.sleep(seconds)
        after = await _batch_histogram(client)
        end = time.perf_counter()
        stop.set()
        await asyncio.gather(*clients)
    in_window = [r for r in records if start <= r.recv <= end]
    batch_sum = batch_count = None
    if before[0] is not None and after[0] is not None:
        batch_sum, batch_count = after[0] - before[0], after[1] - before[1]  # type: ignore[operator]
    return Segment(
        round=round_index,
        seconds=end - start,
        done=[r for r in in_window if r.sent >= start],
        completed=sum(1 for r in in_window if r.status == 200),
        errors=sum(1 for r in in_window if r.status != 200),
        batch_sum=batch_sum,
        batch_count=batch_count,
    )


async def warm_up(base: str, clip: bytes, tasks: Sequence[str], weights: Sequence[float], concurrency: int) -> None:
    """Load every adapter (one request per task), then a short burst of load."""
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        for task in tasks:
            r = await _post(client, clip, task)
            if r.status != 200:
                raise RuntimeError(f"warm-up request for {task} failed with status {r.status}")
    await closed_loop(base, clip, tasks, weights, concurrency, 1.0, round_index=-1)


async def http_overhead(base: str, clip: bytes, task: str, n: int = 30) -> dict[str, Any]:
    """Sequential single requests (batch 1): end-to-end ÷ ``timing_ms.model``, median of ``n`` (after 3 unmeasured);
    also without the batcher's wait (at batch 1 a request waits out ``max_wait_ms`` for company)."""
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        for _ in range(3):
            await _post(client, clip, task)
        records = [await _post(client, clip, task) for _ in range(n)]
    ok = [r for r in records if r.status == 200 and r.model_ms]
    if not ok:
        return {"n": 0}
    e2e = [(r.recv - r.sent) * 1000 for r in ok]
    return {
        "n": len(ok),
        "e2e_over_model": statistics.median(e / r.model_ms for e, r in zip(e2e, ok, strict=True)),  # type: ignore[operator]
        "e2e_minus_wait_over_model": statistics.median(
            (e - (r.queue_ms or 0.0)) / r.model_ms  # type: ignore[operator]
            for e, r in zip(e2e, ok, strict=True)
        ),
        "share": {  # median share of the end-to-end latency
            "model": statistics.median(r.model_ms / e for e, r in zip(e2e, ok, strict=True)),  # type: ignore[operator]
            "batch_wait": statistics.median((r.queue_ms or 0.0) / e for e, r in zip(e2e, ok, strict=True)),
            "decode": statistics.median((r.decode_ms or 0.0) / e for e, r in zip(e2e, ok, strict=True)),
        },
        "e2e_ms_median": statistics.median(e2e),
        "model_ms_median": statistics.median(r.model_ms for r in ok),  # type: ignore[type-var]
    }


# ------------------------------------------------------------------------------------------------ analysis
def clips_per_forward(records: Sequence[Record]) -> float | None:
    """Mean clips per backbone forward, from the responses alone: the clips of one forward share its
    ``timing_ms.model`` (to the µs) and arrive together, so group by that value and split a group where the
    arrivals are more than ``CLUSTER_GAP_S`` apart (two forwards that took the same µs)."""
    by_model: dict[float, list[float]] = {}
    for r in records:
        if r.status == 200 and r.model_ms is not None:
            by_model.setdefault(r.model_ms, []).append(r.recv)
    forwards = clips = 0
    for arrivals in by_model.values():
        arrivals.sort()
        forwards += 1 + sum(1 for a, b in zip(arrivals, arrivals[1:], strict=False) if b - a > CLUSTER_GAP_S)
        clips += len(arrivals)
    return clips / forwards if forwards else None


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summarize(arm: Arm) -> dict[str, Any]:
    rps = [s.rps for s in arm.segments]
    done = [r for s in arm.segments for r in s.done if r.status == 200]
    latencies = [(r.recv - r.sent) * 1000 for r in done]
    sums = [s.batch_sum for s in arm.segments if s.batch_sum is not None]
    counts = [s.batch_count for s in arm.segments if s.batch_count]
    med = statistics.median(rps)
    return {
        "engine": arm.engine,
        "policy": arm.policy,
        "ready_s": round(arm.server.ready_s, 1) if arm.server else None,
        "rps_per_round": [round(x, 2) for x in rps],
        "rps_median": med,
        "rps_spread": (max(rps) - min(rps)) / med if med else None,
        "p50_ms": percentile(latencies, 0.50) if latencies else None,
        "p99_ms": percentile(latencies, 0.99) if latencies else None,
        "requests": len(done),
        "errors": sum(s.errors for s in arm.segments),
        "mean_collected_batch": sum(sums) / sum(counts) if counts else None,  # type: ignore[arg-type]
        "mean_clips_per_forward": clips_per_forward(done),
        "model_share_under_load": (
            statistics.mean(r.model_ms for r in done) / statistics.mean(latencies) if done else None  # type: ignore[misc]
        ),
        "http_overhead_batch1": arm.overhead,
    }


def ratios(arms: Sequence[Arm], summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """mixed ÷ per-task throughput per engine (median of per-round ratios: same round, alternated order where the
    servers ran side by side), per-task ÷ mixed p99, and ray ÷ local for each policy."""
    out: dict[str, Any] = {}
    by_name = {a.name: a for a in arms}
    for engine in ("local", "ray"):
        mixed, split = by_name.get(f"{engine}/mixed"), by_name.get(f"{engine}/per-task")
        if mixed is None or split is None:
            continue
        per_round = [m.rps / s.rps for m, s in zip(mixed.segments, split.segments, strict=False) if s.rps]
        sm, ss = summaries[mixed.name], summaries[split.name]
        out[f"{engine}: mixed / per-task throughput"] = {
            "median": statistics.median(per_round) if per_round else None,
            "per_round": [round(x, 3) for x in per_round],
            "alternated": engine == "local",
        }
        if sm["p99_ms"] and ss["p99_ms"]:
            out[f"{engine}: per-task / mixed p99"] = ss["p99_ms"] / sm["p99_ms"]
            out[f"{engine}: per-task / mixed p50"] = ss["p50_ms"] / sm["p50_ms"]
    for policy in POLICIES:
        local, ray = summaries.get(f"local/{policy}"), summaries.get(f"ray/{policy}")
        if local and ray and local["rps_median"]:
            out[f"ray / local throughput ({policy}, not alternated)"] = ray["rps_median"] / local["rps_median"]
    return out


# ---------------------------------------------------------------------------------------------------- run
def _serve_args(args: argparse.Namespace, policy: str, data_dir: Path) -> list[str]:
    return [
        "--backbone", args.backbone, "--data-dir", str(data_dir), "--batch-policy", policy,
        "--max-wait-ms", str(args.max_wait_ms), "--max-batch-size", str(args.max_batch_size),
        "--max-queue", str(args.max_queue),
    ]  # fmt: skip


def _measure(arms: list[Arm], args: argparse.Namespace, clip: bytes, tasks: list[str], weights: list[float]) -> None:
    """Warm up every arm's server, then ``rounds`` rounds over the arms (order reversed every other round), then
    the batch-1 HTTP overhead of each."""
    segment_s = args.duration / args.rounds
    for arm in arms:
        assert arm.server is not None
        asyncio.run(warm_up(arm.server.url, clip, tasks, weights, args.concurrency))
    for r in range(args.rounds):
        for arm in arms if r % 2 == 0 else arms[::-1]:
            assert arm.server is not None
            seg = asyncio.run(
                closed_loop(arm.server.url, clip, tasks, weights, args.concurrency, segment_s, round_index=r)
            )
            arm.segments.append(seg)
            _progress(args, f"  round {r + 1}/{args.rounds} {arm.name}: {seg.rps:.1f} req/s, {seg.errors} errors")
    for arm in arms:
        assert arm.server is not None
        arm.overhead = asyncio.run(http_overhead(arm.server.url, clip, tasks[0], n=args.overhead_n))


def _progress(args: argparse.Namespace, message: str) -> None:
    if not args.json:
        print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from vpetl.store import AdapterStore, EmbeddedRedis

    tasks = task_names(args.tasks)
    weights = zipf_weights(args.tasks, args.zipf)
    started = time.monotonic()
    load_before = os.getloadavg()
    arms: list[Arm] = []
    with tempfile.TemporaryDirectory(prefix="vpetl-serve-load-") as tmp_dir:
        tmp = Path(tmp_dir)
        clip = make_clip(tmp / "clip.mp4")
        adapters = {t: make_adapter(args.backbone, seed, t, LABELS) for seed, t in enumerate(tasks, start=1)}
        with EmbeddedRedis(tmp / "redis") as redis_server:
            store = AdapterStore(redis_server.url)
            for task, data in adapters.items():
                store.publish(task, data, {})
            store.close()
            for engine in args.engines:
                policies = args.policies if engine == "local" else args.ray_policies
                group = [Arm(engine, p) for p in policies]
                if engine == "local":  # side by side: the rounds alternate between them
                    phases = [group]
                else:  # one Ray instance at a time
                    phases = [[arm] for arm in group]
                for phase in phases:
                    _progress(args, f"starting {', '.join(a.name for a in phase)} …")
                    for arm in phase:
                        arm.server = ServeProcess(
                            engine, redis_server.url, _serve_args(args, arm.policy, tmp / f"data-{arm.engine}"),
                            tmp / f"serve-{engine}-{arm.policy}.log", torch_threads=args.torch_threads,
                        ).start()  # fmt: skip
                    try:
                        for arm in phase:
                            arm.server.wait_ready()  # type: ignore[union-attr]
                            _progress(args, f"  {arm.name} ready in {arm.server.ready_s:.0f} s")  # type: ignore[union-attr]
                        _measure(phase, args, clip, tasks, weights)
                    finally:
                        for arm in phase:
                            if arm.server is not None:
                                arm.server.stop()
                    arms.extend(phase)
    summaries = {a.name: summarize(a) for a in arms}
    return {
        "machine": {
            "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads_per_server": args.torch_threads,
            "torch": torch.__version__,
            "loadavg_1m_before": round(load_before[0], 2),
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
        },
        "config": {
            "backbone": args.backbone, "tasks": args.tasks, "zipf_alpha": args.zipf, "concurrency": args.concurrency,
            "seconds_per_arm": args.duration, "rounds": args.rounds, "max_batch_size": args.max_batch_size,
            "max_wait_ms": args.max_wait_ms, "max_queue": args.max_queue, "method": "bapat",
        },  # fmt: skip
        "bound": {
            "expected_distinct_tasks_per_full_batch": expected_distinct(weights, args.max_batch_size),
            "top_task_share": weights[0],
        },
        "arms": list(summaries.values()),
        "ratios": ratios(arms, summaries),
        "wall_s": round(time.monotonic() - started, 1),
    }


# ------------------------------------------------------------------------------------------------- report
def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(result: dict[str, Any]) -> str:
    m, c, b = result["machine"], result["config"], result["bound"]
    lines = [
        f"serve_load: {c['backbone']}, {c['tasks']} bapat tasks, Zipf α={c['zipf_alpha']:g}, {c['concurrency']} "
        f"closed-loop clients, {c['seconds_per_arm']:g} s per arm in {c['rounds']} rounds; batcher "
        f"max {c['max_batch_size']} / {c['max_wait_ms']:g} ms",
        f"machine: {m['cores']} cores ({m['cpu']}), {m['torch_threads_per_server']} torch thread(s) per server, "
        f"load average {m['loadavg_1m_before']} before / {m['loadavg_1m_after']} after — shared and noisy: "
        "quote ratios, not absolute times",
        "",
        f"{'arm':<16} {'req/s':>7} {'spread':>7} {'p50 ms':>8} {'p99 ms':>8} {'batch':>6} {'clips/fwd':>9} "
        f"{'model%':>7} {'errors':>6} {'e2e/model@1':>12}",
    ]
    for a in result["arms"]:
        o = a["http_overhead_batch1"]
        lines.append(
            f"{a['engine'] + '/' + a['policy']:<16} {_fmt(a['rps_median'], '.1f'):>7} "
            f"{_fmt(a['rps_spread'] and 100 * a['rps_spread'], '.0f') + '%':>7} {_fmt(a['p50_ms'], '.1f'):>8} "
            f"{_fmt(a['p99_ms'], '.1f'):>8} {_fmt(a['mean_collected_batch'], '.2f'):>6} "
            f"{_fmt(a['mean_clips_per_forward'], '.2f'):>9} "
            f"{_fmt(a['model_share_under_load'] and 100 * a['model_share_under_load'], '.0f') + '%':>7} "
            f"{a['errors']:>6} {_fmt(o.get('e2e_over_model'), '.1f'):>12}"
        )
    lines += [
        "",
        "batch: mean collected batch (/metrics vpetl_batch_size; '-' on Ray: it lives in the replicas); clips/fwd: "
        "mean clips per backbone forward (from timing_ms.model); model%: model time ÷ end-to-end latency under load; "
        "e2e/model@1: one sequential request's end-to-end latency ÷ its timing_ms.model, median of 30.",
        "",
        "ratios (same run):",
    ]
    for name, value in result["ratios"].items():
        if isinstance(value, dict):
            how = "rounds alternated" if value["alternated"] else "arms one after another"
            lines.append(f"  {name}: {_fmt(value['median'], '.2f')} (per round {value['per_round']}; {how})")
        else:
            lines.append(f"  {name}: {value:.2f}")
    lines.append(
        f"  bound: a full batch of {c['max_batch_size']} under Zipf α={c['zipf_alpha']:g} over {c['tasks']} tasks "
        f"holds {b['expected_distinct_tasks_per_full_batch']:.1f} distinct tasks on average, so per-task runs that "
        "many forwards where mixed runs one; the end-to-end gain is capped by the model's share of the work "
        "(model% above)."
    )
    for a in result["arms"]:
        o = a["http_overhead_batch1"]
        if o.get("n"):
            s = o["share"]
            lines.append(
                f"  HTTP overhead at batch 1, {a['engine']}/{a['policy']}: e2e/model {o['e2e_over_model']:.1f} "
                f"(without the batcher's wait {o['e2e_minus_wait_over_model']:.1f}); shares of e2e: model "
                f"{100 * s['model']:.0f}%, batch wait {100 * s['batch_wait']:.0f}%, decode {100 * s['decode']:.0f}%"
            )
    lines.append(f"wall time {result['wall_s']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="videomae-tiny")
    parser.add_argument("--tasks", type=int, default=20, help="published task adapters")
    parser.add_argument("--zipf", type=float, default=1.0, help="Zipf α of the task mix (0: uniform)")
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop clients")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per arm (over all rounds)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per arm (local arms alternate within each)")
    parser.add_argument("--engines", default="local,ray", help="comma-separated: local, ray")
    parser.add_argument("--policies", default="mixed,per-task", help="batch policies of the local engine")
    parser.add_argument("--ray-policies", default="mixed,per-task", help="batch policies of the Ray engine")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--max-queue", type=int, default=256)
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads per server")
    parser.add_argument("--overhead-n", type=int, default=30, help="sequential requests for the batch-1 overhead")
    parser.add_argument("--full", action="store_true", help="60 s per arm in 5 rounds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.full:
        args.duration, args.rounds = max(args.duration, 60.0), max(args.rounds, 5)
    args.engines = [e for e in args.engines.split(",") if e]
    args.policies = [p for p in args.policies.split(",") if p]
    args.ray_policies = [p for p in args.ray_policies.split(",") if p]
    for e in args.engines:
        if e not in ("local", "ray"):
            parser.error(f"unknown engine {e!r}")
    for p in args.policies + args.ray_policies:
        if p not in POLICIES:
            parser.error(f"unknown batch policy {p!r}")
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else report(result))


if __name__ == "__main__":
    main()
