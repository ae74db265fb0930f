"""benchmarks/gpu.py's data-path section: what each setting of vpetl/petl/data_path.py buys, measured before any of
them is made a default beyond what it already is.

Clips start on the host as separate (C, T, H, W) tensors, as the predictor's batcher holds them; one call is
``bank.stager.stack`` → ``bank.forward`` (copy in, one mixed backbone forward, logits back on the host), timed with
the wall clock because ``forward`` ends synchronized. BAPAT d=128, N = 8 tasks, fp32 (where TF32 matters), B = 1
and 32, arms alternated:

- ``plain``: pageable copies, the default stream, no TF32 (what the bank did before the data path);
- ``pinned+stream``: pinned staging buffer + non-blocking copy + the bank's own stream, no TF32;
- ``+tf32``: the default data path on CUDA;
- ``+compile``: the default plus ``torch.compile`` at fixed buckets (1, 32); the first call per bucket (the
  compile) is reported apart, and the steady state is what is timed. ``torch.compile`` guards on the batch's plan
  (which tasks, how many clips each), so every new task mix compiles again (seconds) — the reason it is off by
  default; this arm measures the best case, one mix repeated. Skipped with ``--quick`` (minutes of inductor on a
  CPU; tests/vpetl/petl/test_data_path.py checks its exactness).

TF32 is a process-wide switch; each arm sets it for its own calls, so alternation stays fair.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch

from vpetl.backbones import create_backbone
from vpetl.petl.bank import AdapterBank
from vpetl.petl.data_path import DataPath

TASKS = 8
BATCHES = (1, 32)
ARMS: dict[str, tuple[DataPath, bool]] = {  # name: (data path, TF32 during its calls)
    "plain": (DataPath(pinned=False, stream=False, tf32=False), False),
    "pinned+stream": (DataPath(tf32=False), False),
    "+tf32": (DataPath(tf32=False), True),
    "+compile": (DataPath(tf32=False, buckets=BATCHES, compile=True), True),
}


def _set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def data_path(
    args: SimpleNamespace,
    alternate: Callable[..., dict[str, dict]],
    timer_cls: type,
    adapters: Callable[..., list[bytes]],
) -> dict[str, Any]:
    """The section (``alternate``, ``timer_cls`` and ``adapters`` are gpu.py's helpers, passed in to keep one
    definition of each)."""
    arms_wanted = [a for a in ARMS if not (args.quick and a == "+compile")]
    clip_shape = (3, args.frames, args.size, args.size)
    host = [torch.randn(clip_shape) for _ in range(max(BATCHES))]  # (C, T, H, W) each, pageable, as decoded
    data = adapters(args.backbone, "bapat", {"bottleneck": 128}, TASKS, prefix="dp")
    tf32_before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    banks: dict[str, AdapterBank] = {}
    compile_s: dict[str, float] = {}
    calls: dict[str, Callable[[], object]] = {}
    try:
        for name in arms_wanted:
            path, tf32 = ARMS[name]
            bank = AdapterBank(create_backbone(args.backbone).to(args.device), budget_bytes=4 << 30, data_path=path)
            for i, d in enumerate(data):
                bank.load(f"dp{i}", 1, d)
            banks[name] = bank
            for b in BATCHES:
                keys = [(f"dp{i % TASKS}", 1) for i in range(b)]

                def call(bank: AdapterBank = bank, b: int = b, keys: list = keys, tf32: bool = tf32) -> None:
                    _set_tf32(tf32)
                    bank.forward(bank.stager.stack(host[:b]), keys)

                calls[f"{name} B={b}"] = call
                if path.compile:
                    t0 = time.perf_counter()
                    call()  # the compile for this bucket and plan
                    compile_s[f"B={b}"] = round(time.perf_counter() - t0, 2)
        timed = alternate(timer_cls(torch.device("cpu")), calls, args.repeats, args.warmup)
    finally:
        _set_tf32(False)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32_before
    out: dict[str, Any] = {
        "method": "bapat d=128",
        "tasks": TASKS,
        "dtype": "fp32",
        "batches": list(BATCHES),
        "arms": arms_wanted,
        "clips_per_s": {a: {str(b): b / timed[f"{a} B={b}"]["median_s"] for b in BATCHES} for a in arms_wanted},
        "spread": {a: {str(b): round(timed[f"{a} B={b}"]["spread"], 3) for b in BATCHES} for a in arms_wanted},
        "compile_first_call_s": compile_s if compile_s else "skipped (--quick)",
        "pinned": {a: banks[a].stager.pin for a in arms_wanted},
    }
    out["over_plain"] = {
        a: {str(b): out["clips_per_s"][a][str(b)] / out["clips_per_s"]["plain"][str(b)] for b in BATCHES}
        for a in arms_wanted
    }
    return out


def markdown(d: dict[str, Any]) -> list[str]:
    """Rows for BENCHMARKS.md's GPU section."""
    lines = [
        "",
        f"Data path (`AdapterBank` {d['dtype']}, {d['method']}, N = {d['tasks']} tasks; host clips → stack → "
        "forward → logits on the host; wall clock, arms alternated):",
        "",
        "| arm | " + " | ".join(f"clips/s B={b}" for b in d["batches"]) + " | ÷ plain |",
        "|---|" + "---|" * len(d["batches"]) + "---|",
    ]
    for a in d["arms"]:
        rates = " | ".join(f"{d['clips_per_s'][a][str(b)]:.3g}" for b in d["batches"])
        ratios = ", ".join(f"{d['over_plain'][a][str(b)]:.2f}×" for b in d["batches"])
        lines.append(f"| {a} | {rates} | {ratios} |")
    lines += ["", f"torch.compile, first call per bucket (the compile): {d['compile_first_call_s']}."]
    return lines
