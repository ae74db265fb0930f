"""Training-step benchmark: time and peak memory of one optimiser step for BAPAT, PATT, AdaptMLP, LoRA vs full
fine-tuning, on the same backbone and batch.

Run: ``python benchmarks/train_step.py [--backbone videomae-b --frames 4 --size 112 --batch 4] [--full] [--json]``
(default: the ``vpetl-demo`` architecture, random init, batch 8 of its 8×64² clips: minutes on 2 cores).
``--full``: ``videomae-b`` (the engine's reference backbone), batch 16 of 8×224² clips on a GPU, batch 4 of
4×112² clips on CPU (DESIGN.md's reduced clip).

Time: the methods run round-robin (A, B, C, … A, B, C …) so machine noise hits them alike; median of ``--steps``
steps after ``--warmup`` steps, with the spread ((max − min) / median). A step is forward, cross-entropy, backward,
SGD update, as in ``training.trainer``.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` over the measured steps (reset per method). On CPU the
allocator is glibc's, which keeps freed memory, so each method is measured in a fresh child process: the peak
resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) above the resident set before the first step —
activations kept for backward, gradients and optimiser state.

The reference beside each time ratio: a frozen matmul still needs its input gradient, only its weight gradient is
skipped, so a method that backpropagates through every block costs about 2/3 of full tuning (forward + input-grad:
2 of the 3 matmul passes), plus its own adapter work; a little less where the first blocks need no input gradient
(AdaptMLP's first adapter sits after block 0's attention) and the patch embedding needs none at all.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vpetl.backbones import create_backbone  # noqa: E402
from vpetl.petl import create_model  # noqa: E402
from vpetl.petl.registry import make_config  # noqa: E402
from vpetl.protocol import InputSpec  # noqa: E402

METHODS: dict[str, dict[str, Any]] = {
    "full": {},
    "bapat": {"bottleneck": 128},
    "patt": {"bottleneck": 128},
    "adaptmlp": {"bottleneck": 64},
    "lora": {"rank": 16},
}
NUM_CLASSES = 10


def build(args: argparse.Namespace, method: str) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.Tensor,
                                                           torch.Tensor]:
    """Model, SGD optimiser and one fixed batch (the same clips and labels for every method)."""
    base = create_backbone(args.backbone)
    spec = InputSpec(**{**base.input_spec.model_dump(), "num_frames": args.frames or base.input_spec.num_frames,
                        "size": args.size or base.input_spec.size})
    backbone = create_backbone(args.backbone, input_spec=spec)
    model = create_model(backbone, make_config(method, **METHODS[method]), NUM_CLASSES, share_backbone=False)
    model.to(args.device)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=1e-3, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, spec.num_frames, spec.size, spec.size, generator=gen).to(args.device)
    y = torch.randint(0, NUM_CLASSES, (args.batch,), generator=gen).to(args.device)
    return model, optimizer, x, y


def step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
         amp: bool) -> None:
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if x.is_cuda:
        torch.cuda.synchronize()


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def cpu_peak_child(args: argparse.Namespace, method: str) -> float:
    """Run in a fresh process: peak resident-set increase (MiB) over warm-up + measured steps."""
    model, optimizer, x, y = build(args, method)
    rss = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
    for _ in range(args.warmup + args.steps):
        step(model, optimizer, x, y, amp=False)
    return (_status_kb("VmHWM") - rss) / 1024


def cpu_peak(args: argparse.Namespace, method: str) -> float | None:
    cmd = [sys.executable, __file__, "--memory-child", method, "--backbone", args.backbone, "--batch", str(args.batch),
           "--steps", "1", "--warmup", "1", "--device", "cpu", "--threads", str(args.threads)]
    if args.frames:
        cmd += ["--frames", str(args.frames)]
    if args.size:
        cmd += ["--size", str(args.size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return None
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_mib"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    cuda = args.device.startswith("cuda")
    arms = {m: build(args, m) for m in args.methods}
    counts = {m: arms[m][0].parameter_counts()["trainable"] for m in arms}
    for _ in range(args.warmup):
        for model, opt, x, y in arms.values():
            step(model, opt, x, y, cuda)
    times: dict[str, list[float]] = {m: [] for m in arms}
    peaks: dict[str, float | None] = {}
    for _ in range(args.steps):
        for m, (model, opt, x, y) in arms.items():
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            step(model, opt, x, y, cuda)
            times[m].append(time.perf_counter() - t0)
            if cuda:
                peaks[m] = max(peaks.get(m) or 0.0, torch.cuda.max_memory_allocated() / 2**20)
    if not cuda:
        del arms
        peaks = {m: cpu_peak(args, m) for m in args.methods}
    full = statistics.median(times["full"]) if "full" in times else None
    rows = {}
    for m in args.methods:
        med = statistics.median(times[m])
        rows[m] = {"trainable_params": counts[m], "step_ms": 1e3 * med,
                   "spread": (max(times[m]) - min(times[m])) / med, "peak_mib": peaks.get(m),
                   "time_vs_full": med / full if full else None,
                   "memory_vs_full": (peaks[m] / peaks["full"]) if peaks.get(m) and peaks.get("full") else None}
    return {
        "benchmark": "train_step", "backbone": args.backbone, "batch": args.batch, "frames": args.frames,
        "size": args.size, "device": args.device, "threads": torch.get_num_threads(), "steps": args.steps,
        "warmup": args.warmup, "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                                            "gpu": torch.cuda.get_device_name() if cuda else None},
        "time_reference_vs_full": 2 / 3, "methods": rows,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default=None, help="default vpetl-demo (videomae-b with --full)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--frames", type=int, default=None, help="clip frames (default: the backbone's spec)")
    parser.add_argument("--size", type=int, default=None, help="clip side (default: the backbone's spec)")
    parser.add_argument("--steps", type=int, default=5, help="measured steps per method (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, full first")
    parser.add_argument("--full", action="store_true", help="videomae-b; batch 16 × 8×224² on GPU, 4 × 4×112² on CPU")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    if args.full:
        args.backbone = args.backbone or "videomae-b"
        args.batch = args.batch or (16 if cuda else 4)
        args.frames = args.frames or (8 if cuda else 4)
        args.size = args.size or (224 if cuda else 112)
    args.backbone = args.backbone or "vpetl-demo"
    args.batch = args.batch or 8
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.memory_child:
        print(json.dumps({"peak_mib": cpu_peak_child(args, args.memory_child)}))
        return
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    clip = f"{args.frames or 'spec'} frames × {args.size or 'spec'}²"
    print(f"train step: {args.backbone}, batch {args.batch} of {clip}, {args.device}, {result['threads']} threads, "
          f"median of {args.steps} after {args.warmup} warm-up, methods alternating")
    print(f"{'method':<10}{'trainable':>12}{'step ms':>10}{'spread':>8}{'× full':>8}{'peak MiB':>10}{'× full':>8}")
    for m, r in result["methods"].items():
        ratio = f"{r['time_vs_full']:.2f}" if r["time_vs_full"] is not None else "-"
        peak = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "-"
        mem = f"{r['memory_vs_full']:.2f}" if r["memory_vs_full"] is not None else "-"
        print(f"{m:<10}{r['trainable_params']:>12,}{r['step_ms']:>10.1f}{r['spread']:>8.2f}{ratio:>8}{peak:>10}{mem:>8}")
    print("FLOP reference vs full for a method that backpropagates through every block: ≈ 0.67 (no weight grads)")


if __name__ == "__main__":
    main()
