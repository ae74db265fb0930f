"""Hot-swap freshness: while a closed-loop load generator sends /predict requests, publish new adapter versions
(the trainer's path: AdapterStore.publish = blob, pointer flip, event) and measure the time from publish to the
first response stamped with the new version; count failed and mixed-version responses (a response whose sha256
is not the one the store holds for the version it names).

Run: ``python benchmarks/hot_swap.py [--engine local|ray] [--swaps 10] [--concurrency 4] [--json]``
It starts its own redis-server and ``vpetl serve`` process (backbone ``videomae-tiny`` by default).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import ServeProcess, make_adapter, make_clip  # noqa: E402


async def _load(base: str, clip: bytes, stop: asyncio.Event, log: list[tuple[float, float, int, str, int]]) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        while not stop.is_set():
            sent = time.perf_counter()
            try:
                r = await client.post("/predict", params={"task": "swap"}, content=clip,
                                      headers={"content-type": "video/mp4"})
                body = r.json() if r.status_code == 200 else {}
                log.append((sent, time.perf_counter(), body.get("version", -1), body.get("adapter_sha256", ""),
                            r.status_code))
            except httpx.HTTPError:
                log.append((sent, time.perf_counter(), -1, "", 0))


async def _run(args: argparse.Namespace, base: str, store: object, clip: bytes) -> dict:
    adapters = [make_adapter(args.backbone, seed, "swap", list("abcd")) for seed in range(args.swaps + 1)]
    first = store.publish("swap", adapters[0], {})  # type: ignore[attr-defined]
    shas = {first.version: first.sha256}
    log: list[tuple[float, float, int, str, int]] = []
    stop = asyncio.Event()
    loaders = [asyncio.create_task(_load(base, clip, stop, log)) for _ in range(args.concurrency)]
    await asyncio.sleep(args.settle)
    freshness = []
    for i in range(1, args.swaps + 1):
        published = time.perf_counter()
        record = await asyncio.to_thread(store.publish, "swap", adapters[i], {})  # type: ignore[attr-defined]
        shas[record.version] = record.sha256
        deadline = published + 10
        seen = None
        while time.perf_counter() < deadline and seen is None:
            await asyncio.sleep(0.01)
            seen = next((recv for _, recv, v, _, _ in log if v == record.version), None)
        freshness.append((seen - published) if seen is not None else float("inf"))
        await asyncio.sleep(args.gap)
    stop.set()
    await asyncio.gather(*loaders)
    failed = sum(1 for *_, status in log if status != 200)
    mixed = sum(1 for _, _, v, sha, status in log if status == 200 and shas.get(v) != sha)
    finite = sorted(f for f in freshness if f != float("inf"))
    return {
        "engine": args.engine,
        "backbone": args.backbone,
        "requests": len(log),
        "swaps": args.swaps,
        "freshness_s": {
            "median": statistics.median(finite) if finite else None,
            "p99": finite[min(len(finite) - 1, int(0.99 * len(finite)))] if finite else None,
            "max": max(freshness),
            "never_seen": sum(1 for f in freshness if f == float("inf")),
        },
        "failed_responses": failed,
        "mixed_version_responses": mixed,
        "throughput_rps": len(log) / max(1e-9, log[-1][1] - log[0][0]) if log else 0.0,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["local", "ray"], default="local")
    parser.add_argument("--backbone", default="videomae-tiny")
    parser.add_argument("--swaps", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--gap", type=float, default=0.5, help="seconds between publishes after a swap is seen")
    parser.add_argument("--settle", type=float, default=1.0)
    parser.add_argument("--full", action="store_true", help="30 swaps, both engines")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    engines = ["local", "ray"] if args.full else [args.engine]
    if args.full:
        args.swaps = 30

    from vpetl.store import AdapterStore, EmbeddedRedis

    results = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        clip = make_clip(tmp / "clip.mp4")
        for engine in engines:
            args.engine = engine
            with EmbeddedRedis(tmp / f"redis-{engine}") as redis_server:
                serve_args = ["--backbone", args.backbone, "--data-dir", str(tmp / f"data-{engine}")]
                with ServeProcess(engine, redis_server.url, serve_args, tmp / f"serve-{engine}.log") as server:
                    store = AdapterStore(redis_server.url)
                    results.append(asyncio.run(_run(args, server.url, store, clip)))
    if args.json:
        print(json.dumps(results, indent=2))
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
