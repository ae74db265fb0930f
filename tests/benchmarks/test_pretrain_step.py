"""benchmarks/pretrain_step.py: its reference variant is the Conv3d stem it replaced, and it runs end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_the_conv3d_reference_variant_computes_the_same_stem(load_benchmark: Callable[[str], ModuleType]) -> None:
    """The 'before' the benchmark compares against must be the same map, or its ratio means nothing."""
    from vpetl.backbones.layers import ConvStem3D

    bench = load_benchmark("pretrain_step")
    torch.manual_seed(0)
    stem = ConvStem3D((2, 16, 16), 3, 24, (8, 16))
    stem.add_batch_norm()
    stem.eval()
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(bench._conv3d_stem(stem, x), stem(x), rtol=1e-5, atol=1e-5)


def test_one_round_prints_every_variant_and_ratio(load_benchmark: Callable[[str], ModuleType]) -> None:
    args = ["--rounds", "1", "--steps", "1", "--warmup", "0", "--json"]
    out = subprocess.run([sys.executable, str(BENCH / "pretrain_step.py"), *args], capture_output=True, text=True,
                         timeout=300, check=True)
    result = json.loads(out.stdout)
    assert set(result["ms"]) == set(load_benchmark("pretrain_step").VARIANTS)
    assert all(v > 0 for v in result["ms"].values())
    assert len(result["ratios"]) == 5 and all(v > 0 for v in result["ratios"].values())
    assert isinstance(result["machine"]["native_cpu_bf16"], bool)
