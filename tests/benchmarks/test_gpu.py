"""benchmarks/gpu.py runs on CPU (``--device cpu --quick``) and its JSON has the shape a GPU run's report needs.

CI has no GPU, so this is what proves the one prepared device script works before a GPU session spends its minutes.
Speed targets are not asserted (on a shared CPU, the tax or the mixed ratio can land anywhere); what is asserted is
what a broken script would get wrong: keys, counts, the B and N values, passes per call, positive finite figures.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET_KEYS = {
    "mixed_bapat_N32", "mixed_lora_N32", "vs_naive_bapat_N32", "vs_naive_lora_N32", "tax_bapat", "tax_lora",
    "bf16_over_fp32_B32", "train_bapat_vs_full", "train_lora_vs_full", "cold_load_4MB_ms",
}  # fmt: skip


def _positive(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("gpu-bench")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--quick", "--json",
         "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), out


def test_quick_cpu_run_reports_every_figure_and_target(run: tuple[dict[str, Any], Path]) -> None:
    r, _ = run
    c = r["config"]
    assert c["device"] == "cpu" and c["quick"] is True and c["backbone"] == "videomae-tiny"
    assert c["batches"] == [1, 8, 32] and c["tasks"] == [1, 8, 32] and c["repeats"] >= 5
    tp = r["throughput"]
    for dtype in ("fp32", "bf16"):
        assert set(tp["clips_per_s"][dtype]) == {"1", "8", "32"}
        assert all(_positive(v) for v in tp["clips_per_s"][dtype].values())
    assert all(_positive(v) for v in tp["bf16_over_fp32"].values())

    e = r["engine"]
    assert e["batch"] == 32 and _positive(e["frozen"]["clips_per_s"])
    for method in ("bapat", "lora"):
        m = e[method]
        assert set(m["mixed_ratio"]) == {"N=1", "N=8", "N=32"} and m["mixed_ratio"]["N=1"] == 1.0
        assert all(_positive(v) for v in [*m["mixed_ratio"].values(), *m["clips_per_s"].values()])
        assert _positive(m["adapter_tax"]) and _positive(m["vs_naive"]) and 0 < m["flop_bound"] < 1
        # The bank's whole point: one backbone pass per batch whatever the number of tasks in it.
        assert m["backbone_passes_per_call"] == {"N=1": 1, "N=8": 1, "N=32": 1}
        # The naive arm really is naive: one pass and one adapter copy per task at N = B = 32.
        assert m["naive_passes_per_call"] == 32 and m["naive_adapter_loads_per_call"] == 32

    cl = r["cold_load"]
    assert 3.5 * 2**20 < cl["bytes"] < 4.5 * 2**20 and cl["loads"] >= 5 and _positive(cl["ms_median"])
    assert cl["ms_max"] >= cl["ms_median"]

    ts = r["train_step"]
    assert set(ts["methods"]) == {"full", "bapat", "lora"} and ts["amp_bf16"] is False  # AMP is CUDA-only
    assert ts["methods"]["full"]["vs_full"] == 1.0
    full_params = ts["methods"]["full"]["trainable_params"]
    for method in ("bapat", "lora"):
        row = ts["methods"][method]
        assert _positive(row["vs_full"]) and _positive(row["step_ms"]) and 0 < row["trainable_params"] < full_params

    dp = r["data_path"]  # on CPU: no pinning (CUDA-only), the compile arm left out with --quick
    assert dp["arms"] == ["plain", "pinned+stream", "+tf32"] and dp["batches"] == [1, 32]
    assert dp["pinned"] == {"plain": False, "pinned+stream": False, "+tf32": False}
    assert all(_positive(v) for a in dp["arms"] for v in dp["clips_per_s"][a].values())
    assert dp["over_plain"]["plain"] == {"1": 1.0, "32": 1.0} and "skipped" in dp["compile_first_call_s"]

    assert "skipped" in r["predict_e2e"]
    assert set(r["targets"]) == TARGET_KEYS
    for t in r["targets"].values():
        assert _positive(t["value"]) and isinstance(t["met"], bool) and t["target"][:2] in {">=", "<="}


def test_out_dir_holds_the_json_and_a_ready_markdown_section(run: tuple[dict[str, Any], Path]) -> None:
    r, out = run
    assert json.loads((out / "result.json").read_text())["targets"] == r["targets"]
    section = (out / "section.md").read_text()
    assert section.startswith("## GPU (`benchmarks/gpu.py`)")
    for needle in ("B=32", "N=32", "adapter tax", "FLOP bound", "naive swap", "Cold load", "× full", "/predict",
                   "Data path", "pinned+stream"):
        assert needle in section
