"""GPU benchmark, one prepared script: the engine's issue targets on one H100/H200 in ≤ 8 minutes.

Run: ``vpetl bench gpu [--device cuda] [--out DIR] [--json]`` (= ``python benchmarks/gpu.py …``);
``--device cpu --quick`` runs the same code on ``videomae-tiny`` in seconds (CI proves it works, tests/benchmarks/
test_gpu.py). On the device machine, one call: ``bash benchmarks/gpu_run.sh`` (it installs the carried pydantic
wheels, see that file, and writes result.json + section.md under ``$OUT``).

What it measures (``videomae-b``, 16×224² clips = 1568 tokens, random init: speed does not depend on the weights):

1. backbone throughput, clips/s at B = 1, 8, 32, fp32 and bf16. bf16 = weights and inputs cast with
   ``.to(torch.bfloat16)`` (what a server holds: half the bytes, no per-forward casts as under autocast); fp32 runs
   with torch's default TF32 setting, recorded in ``config``.
2. mixed-task batches (``AdapterBank``, bf16, B = 32): throughput at N = 1, 8, 32 distinct tasks ÷ N = 1, for BAPAT
   d=128 and LoRA r=16; the adapter tax (frozen backbone ÷ adapter-on at N = 1) beside its FLOP bound.
3. the naive per-task swap at N = B = 32 (benchmarks/engine.py's naive arm: one sub-batch forward per task, that
   task's adapter copied into one PetlModel first; the states are kept on the device, the kindest naive case).
4. cold load of a ~4 MB LoRA adapter: artifact bytes → ``bank.load`` → tensors on the device, synchronized.
5. one training step (forward, CE, backward, SGD; bf16 autocast on CUDA) of BAPAT / LoRA ÷ full fine-tuning
   (benchmarks/train_step.py's ``build`` and ``step``).
6. the data path (benchmarks/gpu_data_path.py): pageable vs pinned + own stream vs + TF32 vs + torch.compile at
   fixed buckets, host clips → logits on the host, B = 1 and 32 (fp32, BAPAT, N = 8).
7. end-to-end /predict is not run here (the GPU machine has no Ray/Redis/decord): BENCHMARKS.md's Serving section
   has it, measured on CPU.

Conventions (BENCHMARKS.md): arms compared in one run and alternated A, B, C, A, B, C …; median of ``--repeats``
after ``--warmup``; on CUDA each call is timed with CUDA events and synchronized; targets printed beside figures.
Imports only torch, numpy, safetensors and vpetl (whose ``vpetl.protocol`` needs pydantic: carried as wheels).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import gpu_data_path  # noqa: E402  (the data-path section)
import train_step  # noqa: E402  (its build/step: the training step measured the same way as its own benchmark)

from vpetl.artifact import read_adapter  # noqa: E402
from vpetl.backbones import create_backbone  # noqa: E402
from vpetl.petl import create_model  # noqa: E402
from vpetl.petl.bank import AdapterBank  # noqa: E402
from vpetl.petl.data_path import DataPath  # noqa: E402
from vpetl.petl.io import adapter_bytes  # noqa: E402
from vpetl.petl.registry import make_config  # noqa: E402

METHODS: dict[str, dict[str, Any]] = {"bapat": {"bottleneck": 128}, "lora": {"rank": 16}}
BATCHES = (1, 8, 32)
TASKS = (1, 8, 32)
CLASSES = 10
# (key, description, comparison, threshold): printed beside each figure and recorded as targets[key].
TARGETS: list[tuple[str, str, str, float]] = [
    ("mixed_bapat_N32", "mixed N=B=32 ÷ single-task, BAPAT", ">=", 0.95),
    ("mixed_lora_N32", "mixed N=B=32 ÷ single-task, LoRA", ">=", 0.95),
    ("vs_naive_bapat_N32", "speed-up over the naive swap, N=B=32, BAPAT", ">=", 3.0),
    ("vs_naive_lora_N32", "speed-up over the naive swap, N=B=32, LoRA", ">=", 3.0),
    ("tax_bapat", "adapter tax (frozen ÷ adapter-on), BAPAT", ">=", 0.90),
    ("tax_lora", "adapter tax (frozen ÷ adapter-on), LoRA", ">=", 0.90),
    ("bf16_over_fp32_B32", "bf16 ÷ fp32 throughput, B=32", ">=", 1.8),
    ("train_bapat_vs_full", "PETL train step ÷ full fine-tuning, BAPAT", "<=", 0.5),
    ("train_lora_vs_full", "PETL train step ÷ full fine-tuning, LoRA", "<=", 0.5),
    ("cold_load_4MB_ms", "cold load of a ~4 MB adapter to the device (ms)", "<=", 10.0),
]


class Timer:
    """Seconds of one call: CUDA events around it on a GPU (then a sync), else the wall clock."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn: Callable[[], object]) -> float:
        if not self.cuda:
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000


def alternate(timer: Timer, arms: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, dict]:
    """Median seconds and spread ((max − min) / median) per arm, arms interleaved so drift (clocks, other jobs)
    hits all of them alike; warm-ups first (cuDNN/SDPA kernel choice, allocator growth, plan caches)."""
    for _ in range(warmup):
        for fn in arms.values():
            fn()
    timer.sync()
    times: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(repeats):
        for name, fn in arms.items():
            times[name].append(timer(fn))
    out = {}
    for k, v in times.items():
        med = statistics.median(v)
        out[k] = {"median_s": med, "spread": (max(v) - min(v)) / med}
    return out


def perturbed_adapters(backbone: str, method: str, options: dict[str, Any], n: int, prefix: str) -> list[bytes]:
    """``n`` adapters of one method with different weights (as engine.py's make_adapters), as artifact bytes."""
    model = create_model(backbone, make_config(method, **options), CLASSES)
    out = []
    for i in range(n):
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, p in model.trainable_state_dict().items():
                if not name.startswith("backbone."):
                    p.copy_(0.02 * torch.randn(p.shape, generator=gen))
        out.append(adapter_bytes(model, task=f"{prefix}{i}", labels=[f"c{j}" for j in range(CLASSES)]))
    return out


def flop_bound(backbone: torch.nn.Module, method: str, options: dict[str, Any], tokens: int) -> float:
    """Backbone MACs ÷ (backbone + adapter MACs) per token: the best adapter tax the arithmetic allows.

    engine.py's formula (adapter MACs ≈ its block parameters) plus the attention matmuls (2·tokens·C per token per
    block), which at 1568 tokens are a third of the block's MACs and which engine.py's 98-token clips could ignore."""
    per_token = 0
    for block in backbone.adaptable_blocks():
        c = block.dim
        per_token += 12 * c * c + 2 * tokens * c  # qkv 3C², proj C², MLP 8C²; QKᵀ and AV
    model = create_model(backbone, make_config(method, **options), CLASSES)
    adapter = sum(p.numel() for n, p in model.trainable_state_dict().items() if n.startswith("blocks."))
    return per_token / (per_token + adapter)


class Counter:
    """Counts a module's forward calls (forward pre-hook): proves how many backbone passes an arm ran."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        module.register_forward_pre_hook(self._hook)

    def _hook(self, *_: object) -> None:
        self.calls += 1


def forwards_per_call(counter: Counter, fn: Callable[[], object]) -> int:
    """Backbone passes in one call of ``fn``; refuses a bank result with an error slot (an evicted or unknown
    adapter costs no compute, so its timing would be a fake)."""
    before = counter.calls
    result = fn()
    if isinstance(result, list) and not all(isinstance(x, torch.Tensor) for x in result):
        errors = sorted({type(x).__name__ for x in result if not isinstance(x, torch.Tensor)})
        raise RuntimeError(f"bank.forward returned error slots ({', '.join(errors)}): a timing would be meaningless")
    return counter.calls - before


def throughput(args: SimpleNamespace, timer: Timer) -> dict[str, Any]:
    """Frozen backbone clips/s at each B, fp32 vs bf16, all six arms alternated."""
    fp32 = create_backbone(args.backbone).to(args.device)
    bf16 = create_backbone(args.backbone).to(args.device, torch.bfloat16)
    clips = torch.randn(max(BATCHES), 3, args.frames, args.size, args.size, device=args.device)
    arms: dict[str, Callable[[], object]] = {}
    for b in BATCHES:
        x32, x16 = clips[:b].contiguous(), clips[:b].to(torch.bfloat16)
        arms[f"fp32 B={b}"] = lambda m=fp32, x=x32: m(x)
        arms[f"bf16 B={b}"] = lambda m=bf16, x=x16: m(x)
    with torch.inference_mode():
        timed = alternate(timer, arms, args.repeats, args.warmup)
    out: dict[str, Any] = {"clips_per_s": {}, "spread": {}, "bf16_over_fp32": {}}
    for dtype in ("fp32", "bf16"):
        out["clips_per_s"][dtype] = {str(b): b / timed[f"{dtype} B={b}"]["median_s"] for b in BATCHES}
        out["spread"][dtype] = {str(b): round(timed[f"{dtype} B={b}"]["spread"], 3) for b in BATCHES}
    for b in BATCHES:
        out["bf16_over_fp32"][str(b)] = timed[f"fp32 B={b}"]["median_s"] / timed[f"bf16 B={b}"]["median_s"]
    del fp32, bf16
    return out


def engine(args: SimpleNamespace, timer: Timer) -> dict[str, Any]:
    """Mixed-task batches, the adapter tax and the naive swap, both methods' arms alternated in one run."""
    dtype = args.dtype
    B = max(BATCHES)
    backbone = create_backbone(args.backbone).to(args.device, dtype)
    # One bank holds both methods' adapters, as a server's would. 32 BAPAT d=128 adapters on videomae-b are ~300 MB
    # in bf16, over the default 256 MB budget: evicted ones would come back as UnknownTask slots, i.e. no compute.
    # TF32 off: it is a process-wide switch the default data path turns on; the data-path section measures it.
    bank = AdapterBank(backbone, budget_bytes=16 << 30, data_path=DataPath(tf32=False))
    bank_passes = Counter(backbone)
    clips = torch.randn(B, 3, args.frames, args.size, args.size, device=args.device).to(dtype)
    tokens = backbone.token_info(args.frames, args.size)["tokens"]
    arms: dict[str, Callable[[], object]] = {"frozen": lambda: backbone(clips)}
    naive_passes: dict[str, Counter] = {}
    naive_loads: dict[str, list[int]] = {}
    out: dict[str, Any] = {"dtype": str(dtype).removeprefix("torch."), "batch": B, "tokens_per_clip": tokens}
    for method, options in METHODS.items():
        adapters = perturbed_adapters(args.backbone, method, options, max(TASKS), prefix=method)
        for i, data in enumerate(adapters):
            bank.load(f"{method}{i}", 1, data)
        for n in TASKS:
            keys = [(f"{method}{i % n}", 1) for i in range(B)]
            arms[f"{method} N={n}"] = lambda k=keys: bank.forward(clips, k)
        # The naive arm: engine.py's naive_swap, on the device, with a count of the adapter copies it makes.
        model = create_model(create_backbone(args.backbone), make_config(method, **options), CLASSES)
        model = model.to(args.device, dtype).eval()
        states = [
            {k: torch.from_numpy(v).to(args.device, dtype) for k, v in read_adapter(d).tensors.items()}
            for d in adapters
        ]
        naive_passes[method] = Counter(model.backbone)
        naive_loads[method] = [0]

        def naive(m: Any = model, st: list = states, loads: list[int] = naive_loads[method], n: int = B) -> None:
            with torch.inference_mode():
                for t in range(n):
                    rows = [i for i in range(B) if i % n == t]
                    m.load_trainable_state_dict(st[t])
                    loads[0] += 1
                    m(clips[rows])

        arms[f"{method} naive N={B}"] = naive
        out[method] = {"options": options, "flop_bound": flop_bound(backbone, method, options, tokens)}
    with torch.inference_mode():
        # Pass counts first (one call per arm, outside the timing): the bank must run one backbone pass per mixed
        # batch whatever N is; the naive arm one pass and one adapter copy per task.
        for method in METHODS:
            out[method]["backbone_passes_per_call"] = {
                f"N={n}": forwards_per_call(bank_passes, arms[f"{method} N={n}"]) for n in TASKS
            }
            loads_before = naive_loads[method][0]
            out[method]["naive_passes_per_call"] = forwards_per_call(
                naive_passes[method], arms[f"{method} naive N={B}"]
            )
            out[method]["naive_adapter_loads_per_call"] = naive_loads[method][0] - loads_before
        timed = alternate(timer, arms, args.repeats, args.warmup)
    out["frozen"] = {"clips_per_s": B / timed["frozen"]["median_s"], "spread": round(timed["frozen"]["spread"], 3)}
    for method in METHODS:
        single = timed[f"{method} N=1"]["median_s"]
        naive_s = timed[f"{method} naive N={B}"]["median_s"]
        out[method].update(
            clips_per_s={f"N={n}": B / timed[f"{method} N={n}"]["median_s"] for n in TASKS},
            spread={f"N={n}": round(timed[f"{method} N={n}"]["spread"], 3) for n in TASKS},
            mixed_ratio={f"N={n}": single / timed[f"{method} N={n}"]["median_s"] for n in TASKS},
            adapter_tax=timed["frozen"]["median_s"] / single,
            naive_clips_per_s=B / naive_s,
            naive_spread=round(timed[f"{method} naive N={B}"]["spread"], 3),
            vs_naive=naive_s / timed[f"{method} N={B}"]["median_s"],
        )
    return out


def cold_load(args: SimpleNamespace, timer: Timer) -> dict[str, Any]:
    """Artifact bytes → ``bank.load`` (validate, decode, copy to the device) → synchronized, for a ~4 MB LoRA."""
    backbone = create_backbone(args.backbone).to(args.device, args.dtype)
    bank = AdapterBank(backbone, data_path=DataPath(tf32=False))
    depth, c = len(backbone.adaptable_blocks()), backbone.num_features
    rank = max(1, round(args.cold_mb * 2**20 / (4 * depth * 4 * c)))  # LoRA on q and v: 4·C·r fp32 per block
    data = perturbed_adapters(args.backbone, "lora", {"rank": rank}, 1, prefix="cold")[0]
    bank.load("warm", 1, data)  # first use pays one-off costs (allocator, lazy CUDA init) a cold *adapter* does not
    timer.sync()
    loads = []
    for i in range(max(args.repeats, 5)):
        t0 = time.perf_counter()  # wall clock: the work is mostly host-side (parse, hash, decode) then a copy
        bank.load(f"cold{i}", 1, data)
        timer.sync()
        loads.append(time.perf_counter() - t0)
        bank.evict(f"cold{i}", 1)
    return {
        "bytes": len(data),
        "rank": rank,
        "device_dtype": str(args.dtype).removeprefix("torch."),
        "ms_median": 1e3 * statistics.median(loads),
        "ms_max": 1e3 * max(loads),
        "loads": len(loads),
    }


def training(args: SimpleNamespace, timer: Timer) -> dict[str, Any]:
    """One optimiser step per method, round-robin (train_step.py's arms), bf16 autocast on CUDA."""
    ns = argparse.Namespace(
        backbone=args.backbone, frames=args.frames, size=args.size, batch=args.train_batch, device=str(args.device)
    )
    amp = args.device.type == "cuda"
    arms = {m: train_step.build(ns, m) for m in ("full", *METHODS)}
    timed = alternate(
        timer, {m: lambda a=a: train_step.step(*a, amp) for m, a in arms.items()}, args.repeats, args.warmup
    )
    full = timed["full"]["median_s"]
    rows = {
        m: {
            "trainable_params": arms[m][0].parameter_counts()["trainable"],
            "step_ms": 1e3 * t["median_s"],
            "spread": round(t["spread"], 3),
            "vs_full": t["median_s"] / full,
        }
        for m, t in timed.items()
    }
    return {"batch": args.train_batch, "amp_bf16": amp, "methods": rows, "flop_reference_vs_full": 2 / 3}


def targets(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    values = {
        "mixed_bapat_N32": r["engine"]["bapat"]["mixed_ratio"]["N=32"],
        "mixed_lora_N32": r["engine"]["lora"]["mixed_ratio"]["N=32"],
        "vs_naive_bapat_N32": r["engine"]["bapat"]["vs_naive"],
        "vs_naive_lora_N32": r["engine"]["lora"]["vs_naive"],
        "tax_bapat": r["engine"]["bapat"]["adapter_tax"],
        "tax_lora": r["engine"]["lora"]["adapter_tax"],
        "bf16_over_fp32_B32": r["throughput"]["bf16_over_fp32"]["32"],
        "train_bapat_vs_full": r["train_step"]["methods"]["bapat"]["vs_full"],
        "train_lora_vs_full": r["train_step"]["methods"]["lora"]["vs_full"],
        "cold_load_4MB_ms": r["cold_load"]["ms_median"],
    }
    out = {}
    for key, text, op, threshold in TARGETS:
        v = values[key]
        met = v >= threshold if op == ">=" else v <= threshold
        out[key] = {"value": v, "target": f"{op} {threshold:g}", "met": bool(met), "what": text}
    return out


def run(args: SimpleNamespace) -> dict[str, Any]:
    timer = Timer(args.device)
    cuda = args.device.type == "cuda"
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "gpu",
        "machine": {
            "device": torch.cuda.get_device_name(args.device)
            if cuda
            else (platform.processor() or platform.machine()),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.version.cuda if cuda else None,
            "platform": platform.platform(),
        },
        "config": {
            "device": str(args.device),
            "quick": args.quick,
            "backbone": args.backbone,
            "frames": args.frames,
            "size": args.size,
            "batches": list(BATCHES),
            "tasks": list(TASKS),
            "repeats": args.repeats,
            "warmup": args.warmup,
            "train_batch": args.train_batch,
            "timer": "cuda events" if cuda else "perf_counter",
            "bf16": "weights and inputs .to(torch.bfloat16) (inference); torch.autocast bf16 (training)",
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "engine_dtype": str(args.dtype).removeprefix("torch."),
        },
    }
    sections: list[tuple[str, Callable[[SimpleNamespace, Timer], dict[str, Any]]]] = [
        ("throughput", throughput),
        ("engine", engine),
        ("cold_load", cold_load),
        ("train_step", training),
        ("data_path", lambda a, _t: gpu_data_path.data_path(a, alternate, Timer, perturbed_adapters)),
    ]
    result["seconds"] = {}
    for name, fn in sections:
        s0 = time.perf_counter()
        result[name] = fn(args, timer)
        result["seconds"][name] = round(time.perf_counter() - s0, 2)
        print(f"[gpu.py] {name}: {result['seconds'][name]:.1f} s", file=sys.stderr, flush=True)
        if cuda:
            torch.cuda.empty_cache()  # each section's models go; keep the next section's peak its own
    result["predict_e2e"] = {
        "skipped": "needs the server stack (Ray, Redis, decord), absent on the GPU machine; measured on CPU: "
        "BENCHMARKS.md, Serving"
    }
    result["targets"] = targets(result)
    result["seconds"]["total"] = round(time.perf_counter() - t0, 2)
    return result


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"


def markdown(r: dict[str, Any]) -> str:
    """The BENCHMARKS.md section, ready to paste."""
    c, m, t, e = r["config"], r["machine"], r["targets"], r["engine"]
    tick = {True: "met", False: "**not met**"}

    def tgt(key: str) -> str:
        return f"{t[key]['target']} ({tick[t[key]['met']]})"

    L = [
        "## GPU (`benchmarks/gpu.py`)",
        "",
        f"`{'python benchmarks/gpu.py --device ' + c['device'] + (' --quick' if c['quick'] else '')}` on "
        f"{m['device']} (torch {m['torch']}, CUDA {m['cuda']}), `{c['backbone']}`, {c['frames']}×{c['size']}² clips "
        f"({e['tokens_per_clip']} tokens), {c['timer']}, median of {c['repeats']} after {c['warmup']} warm-up, arms "
        f"alternated; bf16 = {c['bf16']}; fp32 TF32 matmul: {c['tf32_matmul']}; {r['seconds']['total']:.0f} s.",
        "",
        "| clips/s (frozen backbone) | " + " | ".join(f"B={b}" for b in c["batches"]) + " |",
        "|---|" + "---|" * len(c["batches"]),
    ]
    for dtype in ("fp32", "bf16"):
        row = r["throughput"]["clips_per_s"][dtype]
        L.append(f"| {dtype} | " + " | ".join(_fmt(row[str(b)]) for b in c["batches"]) + " |")
    ratio = r["throughput"]["bf16_over_fp32"]
    L.append("| bf16 ÷ fp32 | " + " | ".join(f"{ratio[str(b)]:.2f}×" for b in c["batches"]) + " |")
    L += [
        "",
        f"bf16 ÷ fp32 at B=32: target {tgt('bf16_over_fp32_B32')}.",
        "",
        f"Engine (`AdapterBank`, {e['dtype']}, B = {e['batch']}; frozen backbone {_fmt(e['frozen']['clips_per_s'])} "
        "clips/s):",
        "",
        "| | BAPAT d=128 | LoRA r=16 | target |",
        "|---|---|---|---|",
    ]
    b, lo = e["bapat"], e["lora"]
    for n in c["tasks"]:
        k = f"N={n}"
        L.append(
            f"| mixed {k} ÷ single (clips/s) | {b['mixed_ratio'][k]:.3f} ({_fmt(b['clips_per_s'][k])}) | "
            f"{lo['mixed_ratio'][k]:.3f} ({_fmt(lo['clips_per_s'][k])}) | "
            + (f"{t['mixed_bapat_N32']['target']}" if n == 32 else "")
            + " |"
        )
    L += [
        f"| adapter tax (frozen ÷ N=1) | {b['adapter_tax']:.3f} | {lo['adapter_tax']:.3f} | "
        f"{t['tax_bapat']['target']} |",
        f"| FLOP bound on the tax | {b['flop_bound']:.3f} | {lo['flop_bound']:.3f} | |",
        f"| speed-up over the naive swap, N=B={e['batch']} | {b['vs_naive']:.2f}× | {lo['vs_naive']:.2f}× | "
        f"{t['vs_naive_bapat_N32']['target']} |",
        f"| naive: backbone passes / adapter copies per batch | {b['naive_passes_per_call']} / "
        f"{b['naive_adapter_loads_per_call']} | {lo['naive_passes_per_call']} / "
        f"{lo['naive_adapter_loads_per_call']} | |",
        "",
    ]
    cl, ts = r["cold_load"], r["train_step"]
    L += [
        f"Cold load, {cl['bytes'] / 2**20:.1f} MiB LoRA (r={cl['rank']}) bytes → `bank.load` → on the device "
        f"({cl['device_dtype']}), synchronized: median {cl['ms_median']:.2f} ms, max {cl['ms_max']:.2f} ms of "
        f"{cl['loads']}; target {tgt('cold_load_4MB_ms')}.",
        "",
        f"Train step (batch {ts['batch']}, {'bf16 autocast' if ts['amp_bf16'] else 'fp32'}, SGD), methods alternated:",
        "",
        "| method | trainable | step ms | × full | target |",
        "|---|---|---|---|---|",
    ]
    for name, row in ts["methods"].items():
        key = f"train_{name}_vs_full"
        L.append(
            f"| {name} | {row['trainable_params']:,} | {row['step_ms']:.1f} | {row['vs_full']:.2f} | "
            + (tgt(key) if key in t else "")
            + " |"
        )
    L += [
        "",
        f"FLOP reference for a method that backpropagates through every block: ≈ {ts['flop_reference_vs_full']:.2f}"
        " × full (input gradients, no weight gradients).",
        *gpu_data_path.markdown(r["data_path"]),
        "",
        f"End-to-end /predict: skipped ({r['predict_e2e']['skipped']}).",
        "",
        "Targets: " + "; ".join(f"{k} {v['value']:.3g} {v['target']} {tick[v['met']]}" for k, v in t.items()) + ".",
    ]
    return "\n".join(L)


def parse(argv: list[str] | None) -> SimpleNamespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="videomae-tiny, its 4×32² clips: seconds on a CPU")
    parser.add_argument("--backbone", default=None, help="default videomae-b (videomae-tiny with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per arm (median); default 10, 5 quick")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per arm first; default 2, 1 quick")
    parser.add_argument("--frames", type=int, default=None, help="clip frames (default: the backbone's, 16)")
    parser.add_argument("--size", type=int, default=None, help="clip side (default: the backbone's, 224)")
    parser.add_argument("--engine-dtype", choices=("bf16", "fp32"), default=None, help="default bf16 on CUDA")
    parser.add_argument("--train-batch", type=int, default=None, help="default 8 (4 with --quick)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print the JSON (else the markdown section)")
    parser.add_argument("--out", type=Path, default=None, help="write result.json and section.md here")
    a = parser.parse_args(argv)
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no GPU (use --device cpu --quick)")
    torch.set_num_threads(a.threads)
    backbone = a.backbone or ("videomae-tiny" if a.quick else "videomae-b")
    spec = create_backbone(backbone).input_spec  # the backbone's own clip: 16×224² for videomae-b
    return SimpleNamespace(
        device=device,
        quick=a.quick,
        backbone=backbone,
        frames=a.frames or spec.num_frames,
        size=a.size or spec.size,
        repeats=a.repeats or (5 if a.quick else 10),
        warmup=a.warmup or (1 if a.quick else 2),
        train_batch=a.train_batch or (4 if a.quick else 8),
        json=a.json,
        out=a.out,
        # The engine serves in bf16 on a GPU; on CPU bf16 matmuls are slow emulation, so fp32 there.
        dtype={"bf16": torch.bfloat16, "fp32": torch.float32}[a.engine_dtype or ("bf16" if cuda else "fp32")],
        cold_mb=4.0,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    result = run(args)
    section = markdown(result)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "section.md").write_text(section + "\n")
    print(json.dumps(result, indent=2) if args.json else section)
    bad = [k for k, v in result["targets"].items() if not (math.isfinite(v["value"]) and v["value"] > 0)]
    if bad:  # a broken measurement, not a missed target: fail loudly so a device run is not wasted silently
        sys.exit(f"non-positive or non-finite figures: {bad}")


if __name__ == "__main__":
    main()
