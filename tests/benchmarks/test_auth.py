"""benchmarks/auth.py --quick: the three check arms run against a real redis-server and report sane figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "auth.py"


def test_quick_run_reports_every_arm() -> None:
    out = subprocess.run([sys.executable, str(BENCH), "--quick", "--json"], capture_output=True, text=True,
                         timeout=120, check=True)  # fmt: skip
    result = json.loads(out.stdout)
    check = result["check"]
    assert set(check) == {"admin", "key", "key+rps"} and "http" not in result
    for row in check.values():
        assert 0 < row["min_ms"] <= row["p50_ms"] <= row["max_ms"]
    # the rps arm pays a Redis round trip (the shared token bucket); the cached key check does not
    assert check["key+rps"]["p50_ms"] > check["key"]["p50_ms"]
    assert result["check_meets_target"] == (check["key+rps"]["p50_ms"] <= result["target_p50_ms"])
