"""Edge benchmark: local onnxruntime (fp32 / int8 / merged graphs) vs torch eager, ORT session options, the
task switch on the device, bytes per task switch vs the backbone graph, a `sync` with nothing new, and the int8 /
merged graphs' top-1 agreement with fp32 on the demo tasks.

Run: ``python benchmarks/edge.py [--full] [--agreement] [--only SECTION] [--json] [--server URL] [--repeats N]``.

1. **Latency** (``latency``): the same model (backbone + BAPAT d=128 adapter + head, batch 1) in torch eager
   (2 threads) and in the edge runner (2 intra-op threads; adapter bound once through IOBinding) on the fp32
   graph, the int8 graph (``vpetl.formats.onnx_quant``) and the merged single-task graph (adapter folded in as
   initializers), plus the unbound path (every adapter input fed per call) and the adapter file re-read per call
   (what this benchmark timed before); arms alternated, median of ``--repeats`` after a warm-up; ratios are
   same-run (DESIGN.md "Benchmark conventions"). Graph sizes fp32 vs int8. **Task switch on the device**: a new
   adapter file (bytes never seen) → read, validated, folded and bound; then its first prediction vs a steady
   one. Default: ``vpetl-demo`` at its own spec (8×64²); ``--full`` adds ``videomae-b`` at 4×112² (random init is
   fine for timing).
2. **Session options** (``options``): the runner's choice (ORT_ENABLE_ALL, CPU arena, 2 threads) against
   EXTENDED / BASIC optimisation, no arena and 1 thread.
3. **Bytes per task switch** (``switch``): one adapter file (fp32 and fp16, through the SDK from a server) ÷ the
   backbone graph's size, for BAPAT d=128; bound beside it: adapter ÷ backbone parameters.
4. **Sync with nothing new** (``sync``): bytes and wall time of ``vpetl-edge sync`` when every cached adapter is
   current, against ``--server`` when given, else an in-process contract server with ``--tasks`` adapters.
5. **Agreement** (``--agreement``): the pretrained demo backbone and the two BAPAT demo tasks `vpetl up` trains
   (same recipe; built into ``--data-dir`` on first use, minutes on 2 cores): int8 and merged graphs vs the fp32
   graph, top-1 on each task's validation clips.
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

# torch's OpenMP threads busy-wait at barriers by default; on a shared host with more runnable threads than cores
# that made a batch-1 forward of the demo ViT 724 ms instead of 5.9 ms (measured at load 6). Passive waiting is
# what the edge runner asks of onnxruntime too (no spinning), so both sides wait alike. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "edge_client"))  # the in-process contract server lives with the tests

from edge_client.cache import EdgeCache  # noqa: E402
from edge_client.runner import Runner, graph_feeds  # noqa: E402
from edge_client.sdk import Client  # noqa: E402
from vpetl.artifact import read_adapter  # noqa: E402
from vpetl.backbones import create_backbone  # noqa: E402
from vpetl.formats.onnx import export_backbone_onnx  # noqa: E402
from vpetl.formats.onnx_quant import quantize_graph  # noqa: E402
from vpetl.petl import create_model  # noqa: E402
from vpetl.petl.io import adapter_bytes  # noqa: E402
from vpetl.petl.registry import make_config  # noqa: E402
from vpetl.protocol import InputSpec  # noqa: E402

THREADS = 2
BAPAT = {"bottleneck": 128}  # PATT d=128, AdaptMLP r=64 (the defaults), k/v slots


def alternate(arms: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict[str, float]]:
    """Arms interleaved as the harness's timer does, but with the order rotated every round: an arm right after
    torch (whose OpenMP threads spin on for a while after it returns) or after another session would otherwise
    always pay for its neighbour. Median and spread per arm, in milliseconds."""
    names = list(arms)
    for fn in arms.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in names}
    for i in range(repeats):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            t0 = time.perf_counter()
            arms[name]()
            times[name].append(time.perf_counter() - t0)
    out = {}
    for k, v in times.items():
        med = statistics.median(v)
        out[k] = {"median_ms": med * 1e3, "spread": (max(v) - min(v)) / med}
    return out


def _model(backbone: Any, num_classes: int = 10, seed: int = 0) -> Any:
    model = create_model(backbone, make_config("bapat", **BAPAT), num_classes, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # zero-init ups would make the adapter a no-op: give it real values
        for p in model.trainable_state_dict().values():
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _adapter(model: Any, task: str, dtype: str = "float32") -> bytes:
    return adapter_bytes(
        model,
        task=task,
        labels=[f"c{i}" for i in range(model.num_classes)],
        dtype=dtype,
        created_at="2025-01-01T00:00:00Z",
    )


def _fold(graph: Path, runner: Runner, data: bytes, dst: Path) -> Path:
    """The single-task graph of ``data``: every adapter input folded in as an initializer (what
    ``vpetl.formats.onnx_merge`` does for BAPAT), built from the exported graph without a second export."""
    from vpetl.formats.onnx_merge import fold_inputs

    adapter = read_adapter(data)
    fold_inputs(graph, dst, graph_feeds(runner.info, adapter), {
        "input_names": json.dumps(["clip"]), "merged_task": adapter.meta.task,
        "merged_adapter_sha256": adapter.sha256,
    })  # fmt: skip
    return dst


def latency(name: str, spec: InputSpec | None, workdir: Path, repeats: int) -> dict[str, Any]:
    """Batch 1, one clip, the same adapter: torch eager vs the edge runner on the fp32 graph (adapter bound once),
    the int8 graph, the merged single-task graph, and the unbound path (every adapter input fed per call, the
    runner before IOBinding). Plus graph sizes and the task switch (new adapter file → first prediction)."""
    backbone = create_backbone(name, input_spec=spec) if spec else create_backbone(name)
    graph = workdir / f"{name}-lat.onnx"
    t0 = time.perf_counter()
    export_backbone_onnx(backbone, "bapat", graph)
    export_s = time.perf_counter() - t0
    int8 = workdir / f"{name}-lat-int8.onnx"
    t0 = time.perf_counter()
    quantize_graph(graph, int8)
    quantize_s = time.perf_counter() - t0
    model = _model(backbone)
    data = _adapter(model, "bench")
    runner = Runner(graph, threads=THREADS)
    runner_int8 = Runner(int8, threads=THREADS)
    merged = Runner(_fold(graph, runner, data, workdir / f"{name}-lat-merged.onnx"), threads=THREADS)
    s = backbone.input_spec
    clip = np.random.default_rng(0).standard_normal((1, 3, s.num_frames, s.size, s.size), np.float32)
    x = torch.from_numpy(clip)
    adapter = read_adapter(data)  # the device reads the file once (sha256, header, tensors), not per clip
    feeds = {"clip": clip, **graph_feeds(runner.info, adapter)}
    for r in (runner, runner_int8, merged):
        r.logits(clip, adapter)  # folds and binds the adapter once: later calls bind only the clip

    def torch_arm() -> object:
        with torch.inference_mode():
            return model(x)

    with torch.inference_mode():
        want = model(x).numpy()
    diff = float(np.abs(runner.logits(clip, adapter) - want).max())
    diff_int8 = float(np.abs(runner_int8.logits(clip, adapter) - want).max())
    diff_merged = float(np.abs(merged.logits(clip, adapter) - want).max())
    times = alternate({
        "torch_eager": torch_arm,
        "onnxruntime": lambda: runner.logits(clip, adapter),
        "onnxruntime_int8": lambda: runner_int8.logits(clip, adapter),
        "onnxruntime_merged": lambda: merged.logits(clip, adapter),
        "onnxruntime_unbound": lambda: runner.session.run(["logits"], feeds),
        # what this benchmark timed before: the adapter file's bytes handed in per call (re-read, re-hashed)
        "onnxruntime_file_per_call": lambda: runner.logits(clip, data),
    }, repeats)  # fmt: skip
    torch_ms = times["torch_eager"]["median_ms"]
    return {
        "backbone": name,
        "clip": f"{s.num_frames}x{s.size}^2",
        "batch": 1,
        "threads": THREADS,
        "export_s": round(export_s, 1),
        "quantize_s": round(quantize_s, 1),
        "max_abs_logit_diff": diff,
        "max_abs_logit_diff_int8": diff_int8,
        "max_abs_logit_diff_merged": diff_merged,
        **times,
        "ratio_ort_over_torch": times["onnxruntime"]["median_ms"] / torch_ms,
        "ratio_unbound_over_torch": times["onnxruntime_unbound"]["median_ms"] / torch_ms,
        "ratio_file_per_call_over_torch": times["onnxruntime_file_per_call"]["median_ms"] / torch_ms,
        "ratio_merged_over_torch": times["onnxruntime_merged"]["median_ms"] / torch_ms,
        "ratio_int8_over_fp32": times["onnxruntime_int8"]["median_ms"] / times["onnxruntime"]["median_ms"],
        "graph_bytes_fp32": graph.stat().st_size,
        "graph_bytes_int8": int8.stat().st_size,
        "size_ratio_int8": int8.stat().st_size / graph.stat().st_size,
        "task_switch": _switch(backbone, runner, clip, repeats),
    }


def _switch(backbone: Any, runner: Runner, clip: np.ndarray, repeats: int) -> dict[str, float]:
    """A new adapter file arrives (bytes on disk, never seen by the runner): read + validate + fold + bind, then
    the first prediction; against a steady prediction. Another adapter each repeat, so nothing is cached."""
    files = [_adapter(_model(backbone, seed=100 + i), f"switch-{i}") for i in range(repeats)]
    switch, first, steady = [], [], []
    for data in files:
        t0 = time.perf_counter()
        adapter = runner.activate(data)  # read_adapter (sha256, header, tensors) + numpy folding + IOBinding
        t1 = time.perf_counter()
        runner.logits(clip, adapter)
        t2 = time.perf_counter()
        runner.logits(clip, adapter)
        t3 = time.perf_counter()
        switch.append(t1 - t0)
        first.append(t2 - t1)
        steady.append(t3 - t2)
    med = statistics.median
    return {"switch_ms_median": med(switch) * 1e3, "first_call_ms_median": med(first) * 1e3,
            "steady_call_ms_median": med(steady) * 1e3, "adapter_bytes": len(files[0])}  # fmt: skip


def session_options(name: str, spec: InputSpec | None, workdir: Path, repeats: int) -> dict[str, Any]:
    """The runner's ORT options against the alternatives: graph optimisation level, memory arena, intra-op
    threads (all with the adapter bound, batch 1)."""
    import onnxruntime as ort

    from edge_client import runner as R

    backbone = create_backbone(name, input_spec=spec) if spec else create_backbone(name)
    graph = workdir / f"{name}-lat.onnx"  # the latency section's export when it ran (ViT-B takes minutes)
    if not graph.is_file():
        export_backbone_onnx(backbone, "bapat", graph, check=False)
    data = read_adapter(_adapter(_model(backbone), "bench"))
    s = backbone.input_spec
    clip = np.random.default_rng(0).standard_normal((1, 3, s.num_frames, s.size, s.size), np.float32)
    level = ort.GraphOptimizationLevel
    variants = {
        "chosen (ALL, arena, 2 threads)": {},
        "EXTENDED": {"graph_optimization_level": level.ORT_ENABLE_EXTENDED},
        "BASIC": {"graph_optimization_level": level.ORT_ENABLE_BASIC},
        "no arena": {"enable_cpu_mem_arena": False},
        "1 thread": {"intra_op_num_threads": 1},
    }
    runners = {}
    real = R.session_options
    for label, changes in variants.items():

        def patched(*args: Any, _changes: dict = changes, **kwargs: Any) -> Any:
            options = real(*args, **kwargs)
            for key, value in _changes.items():
                setattr(options, key, value)
            return options

        R.session_options = patched  # type: ignore[assignment]  # one Runner per variant, built here
        try:
            runners[label] = Runner(graph, threads=THREADS)
        finally:
            R.session_options = real  # type: ignore[assignment]
        runners[label].logits(clip, data)
    times = alternate({k: (lambda r=r: r.logits(clip, data)) for k, r in runners.items()}, repeats)
    base = times["chosen (ALL, arena, 2 threads)"]["median_ms"]
    return {"backbone": name, "clip": f"{s.num_frames}x{s.size}^2",
            **{k: {**v, "ratio_to_chosen": v["median_ms"] / base} for k, v in times.items()}}  # fmt: skip


def agreement_on_demo_tasks(data_dir: Path, workdir: Path) -> dict[str, Any]:
    """int8 and merged graphs vs fp32 on the demo tasks' validation clips (the pretrained demo backbone and the
    BAPAT adapters `vpetl up` trains, same recipe; cached under ``data_dir`` like `vpetl up`)."""
    from server.cli.common import resolve_checkpoint
    from server.cli.up import DEMO_EPOCHS, DEMO_TASKS, _demo_adapter
    from vpetl.data.readers import open_dataset
    from vpetl.errors import UnknownTask
    from vpetl.formats.onnx_quant import agreement
    from vpetl.video import load_clip

    class Store:  # what _demo_adapter needs of the adapter store: nothing cached, keep what it publishes
        def __init__(self) -> None:
            self.data: dict[str, bytes] = {}

        def get_record(self, task: str) -> Any:
            raise UnknownTask(task)

        def publish(self, task: str, data: bytes, meta: Any) -> Any:
            self.data[task] = data
            return type("Record", (), {"version": 1})()

    from rich.console import Console

    backbone = create_backbone("vpetl-demo", checkpoint=resolve_checkpoint("vpetl-demo", None, data_dir))
    store = Store()
    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115 - the training progress lines
    for task, (preset, clips_per_class) in DEMO_TASKS.items():
        _demo_adapter(backbone, store, task, preset, data_dir, clips_per_class=clips_per_class,
                      epochs=DEMO_EPOCHS, out=quiet)  # fmt: skip
    graph = workdir / "demo-agree.onnx"
    export_backbone_onnx(backbone, "bapat", graph, check=False)
    int8 = workdir / "demo-agree-int8.onnx"
    quantize_graph(graph, int8)
    runner = Runner(graph, threads=THREADS)
    out: dict[str, Any] = {}
    for task, (preset, _) in DEMO_TASKS.items():
        root = data_dir / "demo-data" / preset
        clips = [load_clip(item.path, backbone.input_spec) for item in open_dataset(root, "val")]  # (3, T, H, W)
        feeds = graph_feeds(runner.info, read_adapter(store.data[task]))
        merged = _fold(graph, runner, store.data[task], workdir / f"demo-agree-{task}.onnx")
        out[task] = {"int8": agreement(graph, int8, clips, feeds), "merged": agreement(graph, merged, clips, feeds)}
    return out


def task_switch(name: str, workdir: Path) -> dict[str, Any]:
    """Adapter bytes pulled through the SDK per task switch ÷ the graph's size (downloaded once)."""
    from fake_server import FakeServer

    backbone = create_backbone(name)
    graph = workdir / f"{name}-bapat.onnx"
    t0 = time.perf_counter()
    export_backbone_onnx(backbone, "bapat", graph, check=False)
    export_s = time.perf_counter() - t0
    model = _model(backbone)
    out: dict[str, Any] = {
        "backbone": name,
        "method": "bapat d=128 r=64",
        "onnx_bytes": graph.stat().st_size,
        "export_s": round(export_s, 1),
    }
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
    parser.add_argument("--agreement", action="store_true",
                        help="int8/merged vs fp32 top-1 on the demo tasks' validation clips (pretrains and trains "
                        "them into --data-dir on first use, as `vpetl up`)")  # fmt: skip
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".vpetl", help="where `vpetl up` caches the demo")
    parser.add_argument(
        "--only",
        choices=["latency", "options", "switch", "sync", "agreement"],
        action="append",
        help="run only these sections (repeatable)",
    )
    args = parser.parse_args()
    want = set(args.only or ["latency", "options", "switch", "sync"] + (["agreement"] if args.agreement else []))
    torch.set_num_threads(THREADS)
    repeats = max(10, args.repeats)
    result: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/edge.py", *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "torch_threads": THREADS,
            "ort_threads": THREADS,
            "loadavg_at_start": os.getloadavg()[0],
        },  # a shared box: other jobs skew torch's OpenMP most
    }
    with tempfile.TemporaryDirectory(prefix="vpetl-edge-bench-") as tmp:
        work = Path(tmp)
        reduced = InputSpec(num_frames=4, sampling_rate=4, size=112)
        nets = [("vpetl-demo", None)] + ([("videomae-b", reduced)] if args.full else [])
        if "latency" in want:
            result["latency"] = [latency(n, spec, work, repeats) for n, spec in nets]
        if "options" in want:
            result["session_options"] = [session_options(n, spec, work, repeats) for n, spec in nets]
        if "switch" in want:
            result["task_switch"] = [task_switch(n, work) for n, _ in nets]
        if "sync" in want:
            result["sync"] = sync_nothing_new(args.server, args.tasks, repeats, work)
        if "agreement" in want:
            result["agreement"] = agreement_on_demo_tasks(args.data_dir, work)
    result["machine"]["loadavg_at_end"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(result, indent=2))
        return
    m = result["machine"]
    print(
        f"{result['command']}  ({m['cpus']} CPUs, torch/ORT threads {THREADS}, load average "
        f"{m['loadavg_at_start']:.1f} → {m['loadavg_at_end']:.1f})"
    )
    for r in result.get("latency", []):
        print(
            f"latency {r['backbone']} {r['clip']} batch 1 (median of {repeats}, alternating): "
            f"torch eager {r['torch_eager']['median_ms']:.1f} ms; onnxruntime bound "
            f"{r['onnxruntime']['median_ms']:.1f} ms → ORT/torch {r['ratio_ort_over_torch']:.2f} "
            f"(unbound {r['onnxruntime_unbound']['median_ms']:.1f} ms = {r['ratio_unbound_over_torch']:.2f}, "
            f"file re-read per call {r['onnxruntime_file_per_call']['median_ms']:.1f} ms = "
            f"{r['ratio_file_per_call_over_torch']:.2f}); "
            f"merged {r['onnxruntime_merged']['median_ms']:.1f} ms = {r['ratio_merged_over_torch']:.2f}; "
            f"int8 {r['onnxruntime_int8']['median_ms']:.1f} ms → int8/fp32 {r['ratio_int8_over_fp32']:.2f}; "
            f"graph {r['graph_bytes_fp32'] / 2**20:.1f} MiB fp32, int8 {r['size_ratio_int8']:.2f}×; "
            f"max |Δlogit| vs torch {r['max_abs_logit_diff']:.1e} fp32, {r['max_abs_logit_diff_int8']:.1e} int8, "
            f"{r['max_abs_logit_diff_merged']:.1e} merged"
        )
        t = r["task_switch"]
        print(
            f"  task switch (new adapter file → bound): {t['switch_ms_median']:.1f} ms; first call after it "
            f"{t['first_call_ms_median']:.1f} ms vs steady {t['steady_call_ms_median']:.1f} ms"
        )
    for r in result.get("session_options", []):
        parts = ", ".join(f"{k} {v['median_ms']:.1f} ms ({v['ratio_to_chosen']:.2f}×)"
                          for k, v in r.items() if isinstance(v, dict))  # fmt: skip
        print(f"session options {r['backbone']} {r['clip']}: {parts}")
    for r in result.get("task_switch", []):
        print(
            f"task switch {r['backbone']} {r['method']}: graph {r['onnx_bytes'] / 2**20:.1f} MiB once, then "
            f"{r['adapter_bytes_float32'] / 2**20:.2f} MiB fp32 = {100 * r['ratio_float32']:.1f}% / "
            f"{r['adapter_bytes_float16'] / 2**20:.2f} MiB fp16 = {100 * r['ratio_float16']:.1f}% per switch "
            f"(bound: adapter/backbone params {100 * r['bound_param_ratio']:.1f}%)"
        )
    if "sync" in result:
        s = result["sync"]
        print(
            f"sync with nothing new ({s['tasks']} tasks, {s['server']}): {s['nothing_new_adapter_bytes']} adapter "
            f"bytes, {s['nothing_new_requests']} request(s), {s['nothing_new_sync_ms_median']:.1f} ms median "
            f"(spread {s['nothing_new_sync_ms_spread']:.2f}); one 304 check "
            f"{s['conditional_get_304_ms_median'] or float('nan'):.2f} ms "
            f"(first sync: {s['first_sync_adapter_bytes']:,} bytes)"
        )
    for task, variants in result.get("agreement", {}).items():
        for variant, a in variants.items():
            print(
                f"agreement {task} {variant} vs fp32: {a['agree']}/{a['clips']} validation clips "
                f"({100 * (a['agreement'] or 0):.1f}%), max |Δlogit| {a['max_abs_logit_diff']:.2g}"
            )


if __name__ == "__main__":
    main()
