"""Reads at scale: ``GET /adapters/{task}`` and a page of ``GET /adapters?limit=100`` as the number of tasks grows.

It starts its own redis-server (``EmbeddedRedis`` on a TCP port) and a real ``vpetl serve`` (uvicorn, backbone
``videomae-tiny``), publishes N tasks straight into the store (one real small ``linear`` artifact's bytes under N
task names: the reads under test never decode the bytes), then times over HTTP, alternating the arms:

- ``one``: ``GET /adapters/{task}`` for a random task (one script call: O(1) in the number of tasks);
- ``page``: ``GET /adapters?limit=100&cursor=<random task>`` (``ZRANGEBYLEX`` + 100 pipelined summaries);
- ``all``: the unpaged ``GET /adapters`` (every task; O(N), shown for scale; skipped with ``--no-all``).

Run: ``python benchmarks/store_scale.py [--tasks 10,10000] [--repeats 5] [--requests 200] [--json]``. Each figure is
the median over ``--repeats`` runs of that run's p50 (spread: min–max of the runs' p50s). Targets at 10,000 tasks:
one task p50 ≤ 5 ms, a page of 100 p50 ≤ 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import ServeProcess, free_port  # noqa: E402

BACKBONE = "videomae-tiny"


def _artifact() -> bytes:
    from vpetl.petl import create_model
    from vpetl.petl.io import adapter_bytes

    return adapter_bytes(create_model(BACKBONE, "linear", 3, seed=0), task="scale", labels=["a", "b", "c"])


def _fill(redis_url: str, names: list[str], data: bytes) -> float:
    """Publish ``data`` under every name (the store's real publish: index, script, index); seconds taken."""
    from vpetl.artifact import read_adapter_meta
    from vpetl.store import AdapterStore

    meta = read_adapter_meta(data).model_dump(mode="json", include={"method", "trainable_params", "num_classes",
                                                                     "backbone", "labels"})  # fmt: skip
    started = time.perf_counter()
    with AdapterStore(redis_url) as store:
        for name in names:
            store.publish(name, data, meta)
    return time.perf_counter() - started


def _p50(client: httpx.Client, paths: list[str]) -> float:
    times = []
    for path in paths:
        started = time.perf_counter()
        r = client.get(path)
        times.append(time.perf_counter() - started)
        if r.status_code != 200:
            raise RuntimeError(f"GET {path}: {r.status_code} {r.text[:200]}")
    return statistics.median(times) * 1000


def measure(n_tasks: int, args: argparse.Namespace, tmp: Path, data: bytes) -> dict:
    from vpetl.store import EmbeddedRedis

    names = [f"task-{i:05d}" for i in range(n_tasks)]
    rng = random.Random(0)
    with EmbeddedRedis(tmp / f"redis-{n_tasks}", port=free_port()) as redis_server:
        fill_s = _fill(redis_server.url, names, data)
        serve_args = ["--backbone", BACKBONE, "--data-dir", str(tmp / f"data-{n_tasks}")]
        with ServeProcess("local", redis_server.url, serve_args, tmp / f"serve-{n_tasks}.log") as server, \
                httpx.Client(base_url=server.url, timeout=60) as client:  # fmt: skip
            _p50(client, [f"/adapters/{rng.choice(names)}" for _ in range(20)])  # warm-up
            _p50(client, [f"/adapters?limit=100&cursor={rng.choice(names)}" for _ in range(5)])
            runs: dict[str, list[float]] = {"one": [], "page": [], "all": []}
            for _ in range(args.repeats):  # arms alternate within each repeat
                runs["one"].append(_p50(client, [f"/adapters/{rng.choice(names)}" for _ in range(args.requests)]))
                pages = [f"/adapters?limit=100&cursor={rng.choice(names[:-100] or names)}"
                         for _ in range(max(10, args.requests // 4))]  # fmt: skip
                runs["page"].append(_p50(client, pages))
                if not args.no_all:
                    runs["all"].append(_p50(client, ["/adapters"] * 3))
            page = client.get("/adapters?limit=100").json()
            assert len(page["adapters"]) == min(100, n_tasks) and page["total"] == n_tasks, page.get("total")
    summary = {
        arm: {"p50_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v)} for arm, v in runs.items() if v
    }
    return {"tasks": n_tasks, "fill_s": round(fill_s, 2), "artifact_bytes": len(data), **summary}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="10,10000", help="comma-separated task counts")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200, help="one-task requests per repeat")
    parser.add_argument("--no-all", action="store_true", help="skip the unpaged full listing")
    parser.add_argument("--full", action="store_true", help="(the default sizes are the ones worth quoting)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    data = _artifact()
    results = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        for n in (int(x) for x in args.tasks.split(",")):
            results.append(measure(n, args, Path(tmp_dir), data))
    info = {"machine": f"{os.cpu_count()} cores, {sys.platform}", "repeats": args.repeats, "results": results}
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"store_scale ({info['machine']}; median of {args.repeats} runs' p50, [min–max])")
    for r in results:
        parts = [f"{arm} {r[arm]['p50_ms']:.2f} ms [{r[arm]['min_ms']:.2f}–{r[arm]['max_ms']:.2f}]"
                 for arm in ("one", "page", "all") if arm in r]  # fmt: skip
        print(f"  {r['tasks']:>6} tasks (filled in {r['fill_s']} s): " + "; ".join(parts))
    last = results[-1]
    print(f"  targets at {last['tasks']} tasks: one ≤ 5 ms ({last['one']['p50_ms']:.2f}), "
          f"page of 100 ≤ 50 ms ({last['page']['p50_ms']:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
