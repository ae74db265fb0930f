"""Hot-swap freshness: while a closed-loop load generator sends /predict requests, publish new adapter versions
(the trainer's path: AdapterStore.publish = blob, pointer flip, event) and measure the time from publish to the
first response stamped with the new version; count failed and mixed-version responses (a response whose sha256
is not the one the store holds for the version it names).

Run: ``python benchmarks/hot_swap.py [--engine local|ray|ray-cluster] [--swaps 10] [--concurrency 4] [--json]``
It starts its own redis-server and ``vpetl serve`` process (backbone ``videomae-tiny`` by default), or, for
``ray-cluster``, a 2-node Ray cluster (0-CPU head) serving the app with 2 predictor replicas, one per node: there
a swap counts as served once *every* replica answered with the new version, and one replica is killed right
after the middle publish (``--no-kill`` to keep both).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import RayCluster, ServeProcess, free_port, make_adapter, make_clip  # noqa: E402

Entry = tuple[float, float, int, str, int, str]  # sent, received, version, sha256, status, replica


async def _load(base: str, clip: bytes, stop: asyncio.Event, log: list[Entry]) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        while not stop.is_set():
            sent = time.perf_counter()
            try:
                r = await client.post("/predict", params={"task": "swap"}, content=clip,
                                      headers={"content-type": "video/mp4"})
                body = r.json() if r.status_code == 200 else {}
                log.append((sent, time.perf_counter(), body.get("version", -1), body.get("adapter_sha256", ""),
                            r.status_code, body.get("replica", "")))
            except httpx.HTTPError:
                log.append((sent, time.perf_counter(), -1, "", 0, ""))


def _served_everywhere(log: list[Entry], version: int, replicas: set[str]) -> float | None:
    """When the last of ``replicas`` first answered ``version`` (None while one has not)."""
    firsts = {}
    for _, recv, v, _, _, replica in log:
        if v == version and replica in replicas and replica not in firsts:
            firsts[replica] = recv
    return max(firsts.values()) if replicas and set(firsts) >= replicas else None


def _live_replicas(log: list[Entry], since: float) -> set[str]:
    return {replica for _, recv, _, _, status, replica in log if recv >= since and status == 200}


async def _run(
    args: argparse.Namespace, base: str, store: object, clip: bytes, kill: Callable[[], str] | None = None
) -> dict:
    adapters = [make_adapter(args.backbone, seed, "swap", list("abcd")) for seed in range(args.swaps + 1)]
    first = store.publish("swap", adapters[0], {})  # type: ignore[attr-defined]
    shas = {first.version: first.sha256}
    log: list[Entry] = []
    stop = asyncio.Event()
    loaders = [asyncio.create_task(_load(base, clip, stop, log)) for _ in range(args.concurrency)]
    await asyncio.sleep(args.settle)
    freshness = []
    kill_swap = killed_at = 0.0
    dead: set[str] = set()
    for i in range(1, args.swaps + 1):
        # every replica that served in the last second, less the one killed (Serve's replacement joins later)
        replicas = _live_replicas(log, time.perf_counter() - 1.0) - dead
        published = time.perf_counter()
        record = await asyncio.to_thread(store.publish, "swap", adapters[i], {})  # type: ignore[attr-defined]
        shas[record.version] = record.sha256
        killing = kill is not None and i == (args.swaps + 1) // 2
        if killing:
            killed_at = time.perf_counter()
            dead.add(str(await asyncio.to_thread(kill)))  # dies right after a publish: the others must still switch
            replicas = set()  # the killed one never answers again; count the replicas alive after it
        deadline = published + (60 if killing else 10)
        seen = None
        while time.perf_counter() < deadline and seen is None:
            await asyncio.sleep(0.01)
            if not replicas:
                seen = next((recv for _, recv, v, _, _, _ in log if v == record.version), None)
            else:
                seen = _served_everywhere(log, record.version, replicas)
        freshness.append((seen - published) if seen is not None else float("inf"))
        if killing:
            kill_swap = freshness[-1]
        await asyncio.sleep(args.gap)
    stop.set()
    await asyncio.gather(*loaders)
    failed = sum(1 for _, _, _, _, status, _ in log if status != 200)
    stall = None
    if kill is not None:  # the longest time without any response, from the kill on (requests on the dead replica)
        after = sorted(recv for _, recv, *_ in log if recv >= killed_at)
        stall = max((b - a for a, b in zip([killed_at, *after], after, strict=False)), default=None)
    mixed = sum(1 for _, _, v, sha, status, _ in log if status == 200 and shas.get(v) != sha)
    finite = sorted(f for f in freshness if f != float("inf"))
    return {
        "engine": args.engine,
        "backbone": args.backbone,
        "replicas_seen": len({r for *_, r in log if r}),
        "replica_killed": kill is not None,
        "requests": len(log),
        "swaps": args.swaps,
        "freshness_s": {
            "median": statistics.median(finite) if finite else None,
            "p99": finite[min(len(finite) - 1, int(0.99 * len(finite)))] if finite else None,
            "max": max(freshness),
            "never_seen": sum(1 for f in freshness if f == float("inf")),
        },
        "kill_swap_s": kill_swap if kill is not None else None,
        "longest_gap_after_kill_s": stall,
        "failed_responses": failed,
        "mixed_version_responses": mixed,
        "throughput_rps": len(log) / max(1e-9, log[-1][1] - log[0][0]) if log else 0.0,
    }


def _run_cluster(args: argparse.Namespace, redis_url: str, tmp: Path, clip: bytes) -> dict:
    """2 predictor replicas on 2 nodes of a local Ray cluster; one is killed mid-run unless --no-kill."""
    from vpetl.store import AdapterStore

    app_args = {"redis_url": redis_url, "backbone": args.backbone, "predictor_num_cpus": 1, "ingress_num_cpus": 0,
                "torch_threads": 1, "max_wait_ms": 10}  # fmt: skip
    with RayCluster(tmp / "ray", nodes=2, node_cpus=1) as cluster:
        cluster.deploy(app_args, replicas=2)

        def kill() -> str:
            victim = cluster.replicas()[0]
            cluster.kill(victim)
            return victim["replica_id"]

        return asyncio.run(_run(args, cluster.url, AdapterStore(redis_url), clip, None if args.no_kill else kill))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["local", "ray", "ray-cluster"], default="local")
    parser.add_argument("--no-kill", action="store_true", help="ray-cluster: keep both replicas alive")
    parser.add_argument("--backbone", default="videomae-tiny")
    parser.add_argument("--swaps", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--gap", type=float, default=0.5, help="seconds between publishes after a swap is seen")
    parser.add_argument("--settle", type=float, default=1.0)
    parser.add_argument("--full", action="store_true", help="30 swaps, both engines")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    engines = ["local", "ray", "ray-cluster"] if args.full else [args.engine]
    if args.full:
        args.swaps = 30

    from vpetl.store import AdapterStore, EmbeddedRedis

    results = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        clip = make_clip(tmp / "clip.mp4")
        for engine in engines:
            args.engine = engine
            port = free_port() if engine == "ray-cluster" else None  # TCP: replicas run on other "nodes"
            with EmbeddedRedis(tmp / f"redis-{engine}", port=port) as redis_server:
                if engine == "ray-cluster":
                    results.append(_run_cluster(args, redis_server.url, tmp, clip))
                    continue
                serve_args = ["--backbone", args.backbone, "--data-dir", str(tmp / f"data-{engine}")]
                with ServeProcess(engine, redis_server.url, serve_args, tmp / f"serve-{engine}.log") as server:
                    store = AdapterStore(redis_server.url)
                    results.append(asyncio.run(_run(args, server.url, store, clip)))
    if args.json:
        print(json.dumps(results, indent=2), flush=True)  # flush: Ray's exit handlers may skip it
        return
    for r in results:
        f = r["freshness_s"]
        print(f"engine {r['engine']} ({r['backbone']}): {r['swaps']} swaps under {r['requests']} requests "
              f"({r['throughput_rps']:.1f} req/s)")
        print(f"  publish -> first response with the new version: median {f['median']:.3f} s, p99 {f['p99']:.3f} s, "
              f"max {f['max']:.3f} s (target p99 <= 1 s); never seen: {f['never_seen']}")
        print(f"  failed responses: {r['failed_responses']}, mixed-version responses: {r['mixed_version_responses']}")


if __name__ == "__main__":
    main()
