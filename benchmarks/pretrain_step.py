"""Demo-backbone training-step benchmark: what the first `vpetl up` spends its minutes on, variant by variant.

Run: ``python benchmarks/pretrain_step.py [--threads 2] [--rounds 6] [--steps 12] [--json]`` (a minute or two on
2 cores).

Two workloads, each a full optimiser step on one fixed batch, as ``training.trainer.fit`` runs it:

- **pretrain**: ``vpetl-demo`` with the conv stem's BatchNorm, the temporary head and the pixel decoder
  (``training.pretrain._Classifier``), class + reconstruction loss, fused AdamW; batch 16 of 8×64² clips;
- **adapter**: the demo adapter recipe of ``vpetl up`` (BAPAT d=32 on the frozen backbone), batch 8.

Variants (pretrain): ``conv3d-fp32`` — the stem as torch's Conv3d → batch norm → ReLU → Conv3d (the code before the
frame-by-frame 2-D stem; the reference the stem's tests pin it to); ``fp32`` — the stem as it is now; ``bf16`` —
CPU bf16 autocast with attention kept in fp32 (what pretraining runs where ``native_cpu_bf16()``); ``bf16-attn`` —
bf16 autocast with attention in bf16 too. Adapter: ``fp32`` and ``bf16``.

The variants run round-robin (A, B, C, … A, B, C …) so the shared machine's noise hits them alike; each round's
figure is the median of ``--steps`` steps after ``--warmup`` (3) steps, the reported figure the median over rounds, and
every ratio is formed within a round and then its median taken. ``native_cpu_bf16`` is printed: without it bf16 is
emulated and slower.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _harness import median_time  # noqa: E402

from training.pretrain import _Classifier  # noqa: E402
from training.trainer import native_cpu_bf16  # noqa: E402
from vpetl.backbones import create_backbone, layers  # noqa: E402
from vpetl.petl import create_model  # noqa: E402
from vpetl.petl.registry import make_config  # noqa: E402


def _conv3d_stem(self: layers.ConvStem3D, x: torch.Tensor) -> torch.Tensor:
    """The stem through torch's 3-D modules (the previous code path)."""
    for i, conv in enumerate(self.stem):
        x = conv(x)  # (B, C_i, T, H', W')
        if self.norms is not None:
            n = self.norms[i]
            x = F.batch_norm(x, n.running_mean, n.running_var, n.weight, n.bias, self.training, n.momentum, n.eps)
        x = F.relu(x)
    return self.proj(x)


def _bf16_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


@contextlib.contextmanager
def _patched(stem: Callable | None, attention: Callable | None) -> Iterator[None]:
    saved = layers.ConvStem3D.forward, layers.attention
    try:
        if stem is not None:
            layers.ConvStem3D.forward = stem
        if attention is not None:
            layers.attention = attention
        yield
    finally:
        layers.ConvStem3D.forward, layers.attention = saved


def _pretrain_step(bf16: bool) -> Callable[[], None]:
    torch.manual_seed(0)
    backbone = create_backbone("vpetl-demo", seed=0, freeze=False)
    backbone.patch_embed.add_batch_norm()
    backbone.requires_grad_(True)
    model = _Classifier(backbone, 11, reconstruction_weight=1.0).train()
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3, fused=True)
    x, y = torch.randn(16, 3, 8, 64, 64), torch.randint(0, 11, (16,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        loss = loss + model.pop_auxiliary_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _adapter_step(bf16: bool) -> Callable[[], None]:
    torch.manual_seed(0)
    backbone = create_backbone("vpetl-demo", seed=0)
    model = create_model(backbone, make_config("bapat", bottleneck=32, mlp_bottleneck=32), 8, seed=0).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, 3e-3, fused=True)
    x, y = torch.randn(8, 3, 8, 64, 64), torch.randint(0, 8, (8,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


VARIANTS: dict[str, tuple[Callable[[bool], Callable[[], None]], bool, Callable | None, Callable | None]] = {
    # name: (workload, bf16 autocast, stem forward override, attention override)
    "pretrain conv3d-fp32": (_pretrain_step, False, _conv3d_stem, None),
    "pretrain fp32": (_pretrain_step, False, None, None),
    "pretrain bf16": (_pretrain_step, True, None, None),
    "pretrain bf16-attn": (_pretrain_step, True, None, _bf16_attention),
    "adapter fp32": (_adapter_step, False, None, None),
    "adapter bf16": (_adapter_step, True, None, None),
}
RATIOS = (  # (numerator, denominator): < 1 means the first is faster
    ("pretrain fp32", "pretrain conv3d-fp32"),
    ("pretrain bf16", "pretrain fp32"),
    ("pretrain bf16", "pretrain conv3d-fp32"),
    ("pretrain bf16", "pretrain bf16-attn"),
    ("adapter bf16", "adapter fp32"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (vpetl up's default: 2)")
    parser.add_argument("--rounds", type=int, default=6, help="round-robin rounds over the variants")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per variant and round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each variant's timed ones")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = {}
    for name, (workload, bf16, stem, attention) in VARIANTS.items():
        with _patched(stem, attention):
            steps[name] = workload(bf16)
    rounds: list[dict[str, float]] = []
    for r in range(args.rounds):
        figures = {}
        for name, (_, _, stem, attention) in VARIANTS.items():
            with _patched(stem, attention):
                seconds, _ = median_time(steps[name], args.steps, warmup=args.warmup)
                figures[name] = 1000 * seconds
        rounds.append(figures)
        if not args.json:
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()),
                  file=sys.stderr)
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                    "native_cpu_bf16": native_cpu_bf16(), "torch": torch.__version__},
        "ms": {name: round(statistics.median(r[name] for r in rounds), 1) for name in VARIANTS},
        "spread": {name: round((max(v) - min(v)) / statistics.median(v), 2)
                   for name in VARIANTS for v in [[r[name] for r in rounds]]},
        "ratios": {f"{a} / {b}": round(statistics.median(r[a] / r[b] for r in rounds), 3) for a, b in RATIOS},
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"native_cpu_bf16: {result['machine']['native_cpu_bf16']}, {args.threads} threads")
    for name, ms in result["ms"].items():
        print(f"  {name:22s} {ms:7.1f} ms/step  (spread {result['spread'][name]:.2f})")
    for label, ratio in result["ratios"].items():
        print(f"  {label:45s} {ratio:.3f}")


if __name__ == "__main__":
    main()
