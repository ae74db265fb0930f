"""Ray Serve on a compute-bound backbone: the local engine vs Ray with 1 predictor replica vs 2 replicas on 2 nodes.

Closed loop over HTTP (C clients, each sending the next ``POST /predict`` when the last returns; tasks round-robin
over T published BAPAT adapters) against three arms, measured in alternating rounds (local, ray×1, ray×2, local,
…) so machine noise hits them alike:

- ``local``: ``vpetl serve --engine local`` (one process, one torch thread); ``local2``: two such processes, the
  clients split between them — the ceiling two one-thread servers reach on this machine without Ray;
- ``ray1`` / ``ray2``: the real app (``server.ray_app.build_app``) on a 2-node ``ray.cluster_utils.Cluster`` whose
  head has 0 CPUs and whose two worker nodes have 1 CPU each, so each predictor replica (``predictor_num_cpus=1``,
  one torch thread) gets a node of its own; between rounds the app is redeployed with 1 or 2 replicas.

The backbone is registered once with a reduced clip (default ``videomae-b`` at 8×160²: ViT-B's FLOPs per token,
400 tokens, ~0.8 s of one core per clip), which every server and replica loads from Redis. Reported: req/s per
round and median, p50/p99, and the same-run ratios ray1 ÷ local (target ≥ 0.9) and ray2 ÷ ray1 (target ≥ 1.6 for
2 replicas on 2 nodes).

Run: ``python benchmarks/ray_scale.py [--backbone videomae-b --frames 8 --size 160] [--clients 6] [--duration 30]
[--rounds 3] [--json]``; ``--quick`` (``videomae-tiny``, short rounds) checks it works in about a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import RayCluster, ServeProcess, free_port, make_adapter, make_clip  # noqa: E402

LABELS = [f"class{i}" for i in range(5)]
LEAD_S = 2.0  # unmeasured lead-in of each round


def closed_loop(bases: list[str], clip: bytes, tasks: list[str], clients: int, seconds: float) -> dict[str, Any]:
    """C clients for LEAD_S + ``seconds`` (client i talks to ``bases[i % len(bases)]``); requests that finish
    inside the measured window are counted."""
    stop = threading.Event()
    done: list[tuple[float, float, int]] = []  # (sent, received, status)

    def client(i: int) -> None:
        with httpx.Client(base_url=bases[i % len(bases)], timeout=120) as http:
            n = i
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    status = http.post("/predict", params={"task": tasks[n % len(tasks)]},
                                       files={"clip": ("c.mp4", clip, "video/mp4")}).status_code  # fmt: skip
                except httpx.HTTPError:
                    status = 0
                done.append((sent, time.monotonic(), status))
                n += clients

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(LEAD_S + seconds)
    stop.set()
    for t in threads:
        t.join(180)
    window = [(s, r, st) for s, r, st in done if start + LEAD_S <= r <= start + LEAD_S + seconds]
    latencies = sorted((r - s) * 1000 for s, r, st in window if st == 200)
    codes: dict[str, int] = {}
    for *_, st in window:
        if st != 200:
            codes[str(st)] = codes.get(str(st), 0) + 1
    return {
        "rps": len(latencies) / seconds,
        "errors": sum(codes.values()),
        "error_codes": codes,  # status -> count (0: no HTTP answer)
        "p50_ms": statistics.median(latencies) if latencies else None,
        "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else None,
    }


def wait_serving(bases: list[str], clip: bytes, tasks: list[str], timeout_s: float = 180.0) -> None:
    """Until every task answers 200 through every base URL: a redeploy is only measured once its replicas serve
    (Serve reports replicas RUNNING before their first request can succeed under load)."""
    deadline = time.monotonic() + timeout_s
    pending = [(base, task) for base in bases for task in tasks]
    last = ""
    while pending and time.monotonic() < deadline:
        base, task = pending[0]
        try:
            r = httpx.post(f"{base}/predict", params={"task": task}, timeout=60,
                           files={"clip": ("c.mp4", clip, "video/mp4")})  # fmt: skip
            if r.status_code == 200:
                pending.pop(0)
                continue
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as e:
            last = repr(e)
        time.sleep(0.5)
    if pending:
        raise RuntimeError(f"not serving after {timeout_s:g} s: {pending[0]} (last answer: {last})")


def run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ["VPETL_TORCH_THREADS"] = "1"
    import torch

    from vpetl.backbones import create_backbone
    from vpetl.backbones.identity import resolve_backbone
    from vpetl.store import EmbeddedRedis
    from vpetl.store.adapters import redis_client
    from vpetl.store.backbones import BackboneRegistry

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="vpetl-ray-scale-"))
    redis = EmbeddedRedis(tmp / "redis", port=free_port()).start()
    arms = ("local", "local2", "ray1", "ray2")
    results: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    try:
        default = create_backbone(args.backbone).input_spec
        spec = default.model_copy(update={"num_frames": args.frames or default.num_frames,
                                          "size": args.size or default.size})  # fmt: skip
        client = redis_client(redis.url)
        backbone, _ = resolve_backbone(args.backbone, None, BackboneRegistry(client), tmp / "cache", input_spec=spec)
        client.close()
        tasks = [f"task{i}" for i in range(args.tasks)]
        clip = make_clip(tmp / "clip.mp4", frames=16, size=max(64, spec.size + 16), seed=1)
        local, second = (
            ServeProcess("local", redis.url, ["--backbone", args.backbone, "--data-dir", str(tmp / name),
                                              "--max-wait-ms", "10"], tmp / f"{name}.log", torch_threads=1)
            for name in ("local", "local-2")
        )  # fmt: skip
        with local, second:
            with httpx.Client(base_url=local.url, timeout=120) as http:
                for i, task in enumerate(tasks):
                    r = http.put(f"/adapters/{task}",
                                 files={"adapter": ("a.safetensors", make_adapter(backbone, i, task, LABELS))})
                    r.raise_for_status()
            app_args = {"redis_url": redis.url, "backbone": args.backbone, "predictor_num_cpus": 1,
                        "ingress_num_cpus": 0, "torch_threads": 1, "max_wait_ms": 10, "max_batch_size": 8}  # fmt: skip
            with RayCluster(tmp, nodes=2, node_cpus=1) as cluster:  # one predictor replica per node
                for round_ in range(args.rounds):
                    for arm in arms:
                        if arm.startswith("ray"):
                            cluster.deploy(app_args, replicas=int(arm[-1]))
                        bases = {"local": [local.url], "local2": [local.url, second.url]}.get(arm, [cluster.url])
                        wait_serving(bases, clip, tasks)
                        closed_loop(bases, clip, tasks, args.clients, 1.0)  # warm: adapters loaded, batches formed
                        stats = closed_loop(bases, clip, tasks, args.clients, args.duration)
                        results[arm].append(stats)
                        print(f"round {round_ + 1} {arm}: {stats['rps']:.2f} req/s", file=sys.stderr)
    finally:
        redis.stop()
    median = {arm: statistics.median(r["rps"] for r in rows) for arm, rows in results.items()}
    per_round = lambda a, b: [x["rps"] / y["rps"] for x, y in zip(results[a], results[b], strict=True)]  # noqa: E731
    return {
        "machine": {"platform": platform.platform(), "cores": os.cpu_count(), "torch_threads_per_process": 1,
                    "torch": torch.__version__, "loadavg_1m": os.getloadavg()[0]},  # fmt: skip
        "config": {"backbone": args.backbone, "frames": spec.num_frames, "size": spec.size, "tasks": args.tasks,
                   "clients": args.clients, "seconds_per_round": args.duration, "rounds": args.rounds},  # fmt: skip
        "arms": {arm: {"rps_median": median[arm], "rounds": rows} for arm, rows in results.items()},
        "ratios": {
            "ray1 / local": median["ray1"] / median["local"],
            "ray1 / local per round": per_round("ray1", "local"),
            "ray2 / ray1": median["ray2"] / median["ray1"],
            "ray2 / ray1 per round": per_round("ray2", "ray1"),
            "local2 / local": median["local2"] / median["local"],
        },
        "bounds": {
            "ray1 / local": "target >= 0.9",
            "ray2 / ray1": "target >= 1.6 (2 replicas, 2 nodes; ideal 2.0)",
            "local2 / local": "this machine's ceiling for 2 one-thread servers sharing its cores with the clients",
        },
    }


def report(result: dict[str, Any]) -> str:
    c = result["config"]
    lines = [f"{c['backbone']} {c['frames']}x{c['size']}^2, {c['clients']} clients, {c['rounds']} rounds of "
             f"{c['seconds_per_round']:g} s", "arm    req/s (rounds)                 p50 / p99 ms"]  # fmt: skip
    for arm, row in result["arms"].items():
        rounds = ", ".join(f"{r['rps']:.2f}" for r in row["rounds"])
        last = row["rounds"][-1]
        lines.append(f"{arm:6s} {row['rps_median']:6.2f} ({rounds})   {last['p50_ms']:.0f} / {last['p99_ms']:.0f}")
    r = result["ratios"]
    lines.append(f"ray1 / local {r['ray1 / local']:.2f} (target >= 0.9); ray2 / ray1 {r['ray2 / ray1']:.2f} "
                 f"(target >= 1.6; two local servers: {r['local2 / local']:.2f})")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="videomae-b")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per arm and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="videomae-tiny, 2 clients, 3 s rounds, 1 round")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.backbone, args.frames, args.size = "videomae-tiny", 0, 0
        args.clients, args.duration, args.rounds = 2, 3.0, 1
    result = run(args)
    # flush now: Ray's exit handlers may end the process without flushing buffered stdout
    print(json.dumps(result, indent=2) if args.json else report(result), flush=True)


if __name__ == "__main__":
    main()
