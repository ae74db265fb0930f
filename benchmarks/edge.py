"""Edge benchmark: local onnxruntime vs torch eager, bytes per task switch vs the backbone graph, and a `sync` with
nothing new.

Run: ``python benchmarks/edge.py [--full] [--json] [--server URL] [--repeats N]``.

1. **Latency**: the same model (backbone + BAPAT d=128 adapter + head, batch 1) in onnxruntime (the edge runner,
   2 intra-op threads) and in torch eager (2 threads), arms alternated, median of ``--repeats`` after a warm-up;
   the ratio ORT ÷ torch is what to quote on these shared CPUs (DESIGN.md "Benchmark conventions"). Default:
   ``vpetl-demo`` at its own spec (8×64²); ``--full`` adds ``videomae-b`` at a reduced 4×112² clip (random init is
   fine for timing).
2. **Task switch**: bytes a device downloads to switch task (one adapter file, fp32 and fp16, measured through the
   SDK from a server) ÷ the backbone graph's size (downloaded once), for BAPAT d=128 on ``vpetl-demo`` and — with
   ``--full``, since exporting ViT-B takes a minute and ~350 MB — on ``videomae-b``. Bound beside it: adapter
   parameters ÷ backbone parameters (what any encoding of the same numbers gets).
3. **Sync with nothing new**: bytes and wall time of ``vpetl-edge sync`` when every cached adapter is current (and
   of one conditional GET answered 304), against ``--server`` when given, else an in-process contract server with
   ``--tasks`` adapters.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "edge_client"))  # the in-process contract server lives with the tests

from _harness import alternate as _alternate  # noqa: E402

from edge_client.cache import EdgeCache  # noqa: E402
from edge_client.runner import Runner  # noqa: E402
from edge_client.sdk import Client  # noqa: E402
from vpetl.backbones import create_backbone  # noqa: E402
from vpetl.formats.onnx import export_backbone_onnx  # noqa: E402
from vpetl.petl import create_model  # noqa: E402
from vpetl.petl.io import adapter_bytes  # noqa: E402
from vpetl.petl.registry import make_config  # noqa: E402
from vpetl.protocol import InputSpec  # noqa: E402

THREADS = 2
BAPAT = {"bottleneck": 128}  # PATT d=128, AdaptMLP r=64 (the defaults), k/v slots


def alternate(arms: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict[str, float]]:
    """The harness's alternating timer, as milliseconds."""
    return {k: {"median_ms": med * 1e3, "spread": spread} for k, (med, spread) in _alternate(arms, repeats).items()}


def _model(backbone: Any, num_classes: int = 10, seed: int = 0) -> Any:
    model = create_model(backbone, make_config("bapat", **BAPAT), num_classes, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # zero-init ups would make the adapter a no-op: give it real values
        for p in model.trainable_state_dict().values():
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _adapter(model: Any, task: str, dtype: str = "float32") -> bytes:
    return adapter_bytes(model, task=task, labels=[f"c{i}" for i in range(model.num_classes)], dtype=dtype,
                         created_at="2025-01-01T00:00:00Z")


def latency(name: str, spec: InputSpec | None, workdir: Path, repeats: int) -> dict[str, Any]:
    """ORT (runner, prepared feeds) vs torch eager on the same clip and adapter, batch 1."""
    backbone = create_backbone(name, input_spec=spec) if spec else create_backbone(name)
    graph = workdir / f"{name}-lat.onnx"
    t0 = time.perf_counter()
    export_backbone_onnx(backbone, "bapat", graph)
    export_s = time.perf_counter() - t0
    model = _model(backbone)
    data = _adapter(model, "bench")
    runner = Runner(graph, threads=THREADS)
    s = backbone.input_spec
    clip = np.random.default_rng(0).standard_normal((1, 3, s.num_frames, s.size, s.size), np.float32)
    x = torch.from_numpy(clip)
    runner.logits(clip, data)  # prepares (folds + caches) the adapter's feeds: a task switch costs nothing after

    def torch_arm() -> object:
        with torch.inference_mode():
            return model(x)

    def ort_arm() -> object:
        return runner.logits(clip, data)

    with torch.inference_mode():
        diff = float(np.abs(runner.logits(clip, data) - model(x).numpy()).max())
    times = alternate({"onnxruntime": ort_arm, "torch_eager": torch_arm}, repeats)
    return {
        "backbone": name, "clip": f"{s.num_frames}x{s.size}^2", "batch": 1, "threads": THREADS,
        "export_s": round(export_s, 1), "max_abs_logit_diff": diff, **times,
        "ratio_ort_over_torch": times["onnxruntime"]["median_ms"] / times["torch_eager"]["median_ms"],
    }


def task_switch(name: str, workdir: Path) -> dict[str, Any]:
    """Adapter bytes pulled through the SDK per task switch ÷ the graph's size (downloaded once)."""
    from fake_server import FakeServer

    backbone = create_backbone(name)
    graph = workdir / f"{name}-bapat.onnx"
    t0 = time.perf_counter()
    export_backbone_onnx(backbone, "bapat", graph, check=False)
    export_s = time.perf_counter() - t0
    model = _model(backbone)
    out: dict[str, Any] = {"backbone": name, "method": "bapat d=128 r=64", "onnx_bytes": graph.stat().st_size,
                           "export_s": round(export_s, 1)}
    adapter_params = sum(p.numel() for p in model.trainable_state_dict().values())
    backbone_params = sum(p.numel() for p in backbone.frozen_state_dict().values())
    out["bound_param_ratio"] = adapter_params / backbone_params
    with FakeServer() as fake, Client(fake.url) as client:
        for dtype in ("float32", "float16"):
            task = f"switch-{dtype}"
            fake.state.publish(task, _adapter(model, task, dtype))
            cache = EdgeCache(workdir / f"cache-{name}-{dtype}")
            before = client.stats.adapter_bytes
            cache.pull_adapter(client, task)
            got = client.stats.adapter_bytes - before
            out[f"adapter_bytes_{dtype}"] = got
            out[f"ratio_{dtype}"] = got / out["onnx_bytes"]
    graph.unlink()
    return out


def sync_nothing_new(server: str | None, tasks: int, repeats: int, workdir: Path) -> dict[str, Any]:
    """A first sync (downloads), then ``repeats`` syncs with nothing new and 304 checks: bytes and time."""
    import contextlib

    from fake_server import FakeServer

    context: Any = contextlib.nullcontext(None) if server else FakeServer()
    with context as fake:
        url = server or fake.url
        if fake is not None:
            backbone = create_backbone("videomae-tiny")
            for i in range(tasks):
                fake.state.publish(f"task-{i:03d}", _adapter(_model(backbone, 5, seed=i), f"task-{i:03d}"))
        cache = EdgeCache(workdir / "sync-cache")
        with Client(url) as client:
            first = cache.sync(client, backbone=False)
            reports, t304 = [], []
            listed = client.adapters()
            for _ in range(repeats):
                reports.append(cache.sync(client, backbone=False))
                if listed:
                    t0 = time.perf_counter()
                    assert client.download_adapter(listed[0].task, etag=listed[0].sha256) is None
                    t304.append(time.perf_counter() - t0)
    seconds = [r.seconds for r in reports]
    return {
        "server": server or "in-process contract server",
        "tasks": len(first.adapters),
        "first_sync_adapter_bytes": first.adapter_bytes,
        "nothing_new_adapter_bytes": max(r.adapter_bytes for r in reports),
        "nothing_new_requests": reports[-1].requests,
        "nothing_new_sync_ms_median": statistics.median(seconds) * 1e3,
        "nothing_new_sync_ms_spread": (max(seconds) - min(seconds)) / statistics.median(seconds),
        "conditional_get_304_ms_median": statistics.median(t304) * 1e3 if t304 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="add videomae-b (export ~1 min, ~350 MB)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--server", help="measure sync against this running server instead of an in-process one")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per arm (>= 10)")
    parser.add_argument("--tasks", type=int, default=20, help="adapters on the in-process server")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    repeats = max(10, args.repeats)
    result: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/edge.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "torch_threads": THREADS, "ort_threads": THREADS,
                    "loadavg_at_start": os.getloadavg()[0]},  # a shared box: other jobs skew torch's OpenMP most
    }
    with tempfile.TemporaryDirectory(prefix="vpetl-edge-bench-") as tmp:
        work = Path(tmp)
        result["latency"] = [latency("vpetl-demo", None, work, repeats)]
        result["task_switch"] = [task_switch("vpetl-demo", work)]
        if args.full:
            reduced = InputSpec(num_frames=4, sampling_rate=4, size=112)
            result["latency"].append(latency("videomae-b", reduced, work, repeats))
            result["task_switch"].append(task_switch("videomae-b", work))
        result["sync"] = sync_nothing_new(args.server, args.tasks, repeats, work)
    result["machine"]["loadavg_at_end"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(result, indent=2))
        return
    m = result["machine"]
    print(f"{result['command']}  ({m['cpus']} CPUs, torch/ORT threads {THREADS}, load average "
          f"{m['loadavg_at_start']:.1f} → {m['loadavg_at_end']:.1f})")
    for r in result["latency"]:
        print(f"latency {r['backbone']} {r['clip']} batch 1: onnxruntime {r['onnxruntime']['median_ms']:.1f} ms "
              f"(spread {r['onnxruntime']['spread']:.2f}) vs torch eager {r['torch_eager']['median_ms']:.1f} ms "
              f"(spread {r['torch_eager']['spread']:.2f}) → ORT/torch {r['ratio_ort_over_torch']:.2f} "
              f"(max |Δlogit| {r['max_abs_logit_diff']:.1e}, median of {repeats}, alternating)")
    for r in result["task_switch"]:
        print(f"task switch {r['backbone']} {r['method']}: graph {r['onnx_bytes'] / 2**20:.1f} MiB once, then "
              f"{r['adapter_bytes_float32'] / 2**20:.2f} MiB fp32 = {100 * r['ratio_float32']:.1f}% / "
              f"{r['adapter_bytes_float16'] / 2**20:.2f} MiB fp16 = {100 * r['ratio_float16']:.1f}% per switch "
              f"(bound: adapter/backbone params {100 * r['bound_param_ratio']:.1f}%)")
    s = result["sync"]
    print(f"sync with nothing new ({s['tasks']} tasks, {s['server']}): {s['nothing_new_adapter_bytes']} adapter "
          f"bytes, {s['nothing_new_requests']} request(s), {s['nothing_new_sync_ms_median']:.1f} ms median "
          f"(spread {s['nothing_new_sync_ms_spread']:.2f}); one 304 check "
          f"{s['conditional_get_304_ms_median'] or float('nan'):.2f} ms "
          f"(first sync: {s['first_sync_adapter_bytes']:,} bytes)")


if __name__ == "__main__":
    main()
