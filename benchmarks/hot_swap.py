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
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _adapter(backbone: str, seed: int) -> bytes:
    import torch

    from vpetl.petl import create_model
    from vpetl.petl.io import adapter_bytes

    model = create_model(backbone, "bapat", 4, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return adapter_bytes(model, task="swap", labels=list("abcd"))


def _clip(tmp: Path) -> bytes:
    import numpy as np

    from vpetl.data.synth import write_mp4

    frames = (np.random.default_rng(0).random((16, 64, 64, 3)) * 255).astype("uint8")  # (T, H, W, 3)
    write_mp4(tmp / "clip.mp4", frames)
    return (tmp / "clip.mp4").read_bytes()


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
    adapters = [_adapter(args.backbone, seed) for seed in range(args.swaps + 1)]
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
        clip = _clip(tmp)
        for engine in engines:
            args.engine = engine
            with EmbeddedRedis(tmp / f"redis-{engine}") as redis_server:
                port = _free_port()
                env = {**os.environ, "VPETL_TORCH_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
                cmd = [
                    str(Path(sys.executable).parent / "vpetl"), "serve", "--engine", engine, "--port", str(port),
                    "--redis-url", redis_server.url, "--backbone", args.backbone,
                    "--data-dir", str(tmp / f"data-{engine}"),
                ]
                proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                        start_new_session=True)
                base = f"http://127.0.0.1:{port}"
                try:
                    deadline = time.monotonic() + 180
                    while time.monotonic() < deadline:
                        try:
                            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                                break
                        except httpx.HTTPError:
                            time.sleep(0.3)
                    store = AdapterStore(redis_server.url)
                    results.append(asyncio.run(_run(args, base, store, clip)))
                finally:
                    os.killpg(proc.pid, signal.SIGINT)
                    try:
                        proc.wait(60)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
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
