"""``vpetl serve --engine ray`` asking for GPU replicas on a machine without them fails at once with the fix,
instead of starting Ray with made-up GPUs (or replicas that wait for a GPU forever)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.server.conftest import vpetl_executable


@pytest.mark.skipif(torch.cuda.device_count() > 0, reason="this machine has GPUs")
def test_gpu_replicas_without_gpus_are_refused_before_ray_starts(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(VPETL_PREDICTOR_NUM_GPUS="0.5", VPETL_MAX_REPLICAS="4")
    started = time.monotonic()
    r = subprocess.run([vpetl_executable(), "serve", "--engine", "ray", "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    out = " ".join((r.stdout + r.stderr).split())  # the console wraps long lines
    assert r.returncode != 0, out
    assert "4 predictor replica(s) × 0.5 GPU need 2 GPU(s); this machine has 0" in out, out
    assert "RAY_ADDRESS" in out and time.monotonic() - started < 30
    assert not (tmp_path / "redis").exists()  # refused before the embedded Redis (or Ray) started
