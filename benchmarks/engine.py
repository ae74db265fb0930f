"""Engine benchmark: mixed-task batches vs single-task, the adapter tax, the naive per-task swap, cold loads.

Run: ``python benchmarks/engine.py [--backbone videomae-b] [--batch 8] [--frames 4 --size 112] [--dtype bf16]
[--full] [--json]``
(``make bench`` / ``vpetl bench engine`` run it at a size that finishes in minutes on 2 cores).

Every comparison is measured in the same run, alternating the arms, median of ``--repeats`` after a warm-up; the
printed bound beside a ratio is what FLOPs allow (DESIGN.md "Benchmark conventions").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _harness import alternate, median_time  # noqa: E402

from vpetl.backbones import create_backbone  # noqa: E402
from vpetl.petl import create_model  # noqa: E402
from vpetl.petl.bank import DTYPES, AdapterBank  # noqa: E402
from vpetl.petl.io import adapter_bytes  # noqa: E402
from vpetl.petl.registry import make_config  # noqa: E402


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.trainable_state_dict().items():
            if not name.startswith("backbone."):
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
    return model.eval()


def make_adapters(backbone_name: str, method: str, options: dict, n: int, classes: int = 10) -> list[bytes]:
    """``n`` distinct adapters of one method (different weights), as artifact bytes."""
    model = create_model(backbone_name, make_config(method, **options), classes)
    out = []
    for i in range(n):
        perturbed(model, seed=i)
        out.append(adapter_bytes(model, task=f"t{i}", labels=[f"c{j}" for j in range(classes)]))
    return out


def naive_swap(model: torch.nn.Module, states: list[dict[str, torch.Tensor]], clips: torch.Tensor, n: int) -> None:
    """What stock batching + a module swap does: one sub-batch per task, its weights copied into the modules first."""
    with torch.inference_mode():
        for t in range(n):
            rows = [i for i in range(clips.shape[0]) if i % n == t]
            model.load_trainable_state_dict(states[t])
            model(clips[rows])


def flop_bound(backbone: torch.nn.Module, method: str, options: dict, tokens: int) -> float:
    """Backbone FLOPs ÷ (backbone + adapter FLOPs) per token: the best adapter tax the arithmetic allows."""
    per_token_backbone = 0
    for block in backbone.adaptable_blocks():
        c = block.dim
        per_token_backbone += 12 * c * c  # qkv 3C², proj C², MLP 8C² (MACs)
    model = create_model(backbone, make_config(method, **options), 10)
    adapter = sum(p.numel() for n, p in model.trainable_state_dict().items() if n.startswith("blocks."))
    return per_token_backbone / (per_token_backbone + adapter)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    backbone = create_backbone(args.backbone)
    spec = (args.frames, args.size)
    B = args.batch
    clips = torch.randn(B, 3, spec[0], spec[1], spec[1])  # fp32, as the server hands them over: the bank casts
    dtype = DTYPES[args.dtype]
    low = clips.to(dtype)  # the arms that bypass the bank (frozen, naive) get pre-cast clips
    results: dict = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "config": {"backbone": args.backbone, "batch": B, "frames": spec[0], "size": spec[1], "repeats": args.repeats,
                   "dtype": args.dtype},
    }
    tokens = backbone.token_info(spec[0], spec[1])["tokens"]
    methods = {"bapat": {"bottleneck": 128}, "lora": {"rank": 16}}
    # a bank with no adapter attached: the frozen baseline
    frozen = AdapterBank(create_backbone(args.backbone), dtype=dtype)

    for method, options in methods.items():
        adapters = make_adapters(args.backbone, method, options, B)
        per_strategy = {}
        for strategy in ("segment", "gather"):
            bank = AdapterBank(create_backbone(args.backbone), strategy=strategy, dtype=dtype)
            for i, data in enumerate(adapters):
                bank.load(f"t{i}", 1, data)
            mixes = {n: [(f"t{i % n}", 1) for i in range(B)] for n in sorted({1, min(4, B), B})}
            arms: dict[str, Callable[[], object]] = {
                "frozen": lambda: frozen.backbone(low),
            }
            for n, keys in mixes.items():
                arms[f"N={n}"] = lambda k=keys, bk=bank: bk.forward(clips, k)
            timed = alternate(arms, args.repeats)
            base = timed["N=1"][0]
            per_strategy[strategy] = {
                "seconds": {k: v[0] for k, v in timed.items()},
                "spread": {k: round(v[1], 3) for k, v in timed.items()},
                "mixed_ratio": {k: base / v[0] for k, v in timed.items() if k.startswith("N=")},
                "adapter_tax": timed["frozen"][0] / base,
            }
        # The naive alternative: per-task sub-batches, weights copied into one PetlModel before each sub-batch.
        naive_model = create_model(create_backbone(args.backbone), make_config(method, **options), 10).eval().to(dtype)
        from vpetl.artifact import read_adapter

        states = [{k: torch.from_numpy(v) for k, v in read_adapter(d).tensors.items()} for d in adapters]

        best = min(per_strategy, key=lambda s: per_strategy[s]["seconds"][f"N={B}"])
        bank = AdapterBank(create_backbone(args.backbone), strategy=best, dtype=dtype)
        for i, data in enumerate(adapters):
            bank.load(f"t{i}", 1, data)
        naive_arms: dict[str, Callable[[], object]] = {}
        for n in sorted({1, min(4, B), B}):
            keys = [(f"t{i % n}", 1) for i in range(B)]
            naive_arms[f"bank N={n}"] = lambda k=keys, bk=bank: bk.forward(clips, k)
            naive_arms[f"naive N={n}"] = lambda n=n, m=naive_model, st=states: naive_swap(m, st, low, n)
        timed = alternate(naive_arms, args.repeats)
        results[method] = {
            "options": options,
            "strategies": per_strategy,
            "best_strategy": best,
            "flop_bound": flop_bound(backbone, method, options, tokens),
            "vs_naive": {
                f"N={n}": timed[f"naive N={n}"][0] / timed[f"bank N={n}"][0] for n in sorted({1, min(4, B), B})
            },
        }
    results["cold_load"] = cold_loads(args)
    return results


def cold_loads(args: argparse.Namespace) -> dict:
    """Artifact bytes -> ready, and the cache-hit overhead, for LoRA adapters of about 1, 4 and 12 MB."""
    backbone = create_backbone(args.backbone)
    bank = AdapterBank(backbone)
    c = backbone.num_features
    depth = len(backbone.adaptable_blocks())
    out = {}
    clips = torch.randn(args.batch, 3, args.frames, args.size, args.size)
    for mb in (1, 4, 12):
        # LoRA on q and v: 4·C·r floats per block -> r for ~mb MB.
        rank = max(1, round(mb * 2**20 / (4 * depth * 4 * c)))
        data = make_adapters(args.backbone, "lora", {"rank": rank}, 1)[0]
        loads = []
        for i in range(args.repeats):
            t0 = time.perf_counter()
            bank.load(f"cold{mb}-{i}", 1, data)
            loads.append(time.perf_counter() - t0)
        keys = [(f"cold{mb}-0", 1)] * args.batch
        hit, _ = median_time(lambda k=keys: bank.cache.get(k[0]), args.repeats * 20)
        batch_s, _ = median_time(lambda k=keys: bank.forward(clips, k), max(3, args.repeats // 2))
        out[f"{mb}MB"] = {
            "bytes": len(data),
            "rank": rank,
            "cold_load_ms_median": 1000 * statistics.median(loads),
            "cold_load_ms_max": 1000 * max(loads),
            "cache_hit_us": 1e6 * hit,
            "cache_hit_overhead_of_batch": hit / batch_s,
        }
    return out


def report(results: dict) -> str:
    lines = [f"machine: {results['machine']}", f"config: {results['config']}"]
    for method in ("bapat", "lora"):
        r = results[method]
        lines.append(f"\n{method} {r['options']}  (FLOP bound on the adapter tax: {r['flop_bound']:.3f})")
        for strategy, s in r["strategies"].items():
            mixed = ", ".join(f"{k}: {v:.3f}" for k, v in s["mixed_ratio"].items())
            lines.append(f"  {strategy:8s} mixed/single [{mixed}]  adapter tax {s['adapter_tax']:.3f}")
        naive = ", ".join(f"{k}: {v:.2f}x" for k, v in r["vs_naive"].items())
        lines.append(f"  best strategy {r['best_strategy']}; speed-up over naive per-task swap [{naive}]")
    lines.append("\ncold load (bytes -> ready), cache hit:")
    for size, c in results["cold_load"].items():
        lines.append(
            f"  {size:>5s} ({c['bytes'] / 2**20:.1f} MiB, r={c['rank']}): cold {c['cold_load_ms_median']:.2f} ms "
            f"(max {c['cold_load_ms_max']:.2f}), hit {c['cache_hit_us']:.1f} µs = "
            f"{100 * c['cache_hit_overhead_of_batch']:.4f}% of a batch"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="videomae-b")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="serving dtype of backbone + adapters")
    parser.add_argument("--full", action="store_true", help="batch 16, 8×112² clips, 7 repeats")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.full:
        args.batch, args.frames, args.repeats = 16, 8, 7
    results = run(args)
    print(json.dumps(results, indent=2) if args.json else report(results))


if __name__ == "__main__":
    main()
