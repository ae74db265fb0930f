"""benchmarks/chaos.py at its CI size (``--quick``): under mixed load and hostile clips, with a worker SIGKILLed
mid-job, Redis restarted on its port and a decoder child killed, no acknowledged upload is lost, no job publishes
twice and no bad input gets a 5xx. Each fault must actually have been injected, or the zeros would prove nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "chaos.py"


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", "--keep-logs"], capture_output=True,
                         text=True, timeout=240)  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    return dict(json.loads(out.stdout))


def test_every_fault_was_injected(result: dict[str, Any]) -> None:
    assert result["faults_injected"] == {"worker_kill": 1, "redis_restart": 1, "decoder_kill": 1}, result["notes"]
    assert {w["name"] for w in result["windows"]} == {"worker_kill", "redis_restart", "decoder_kill"}
    # the traffic really ran: good and hostile requests were answered, uploads acknowledged
    assert result["good_ok"] > 0 and result["requests"]["bad"] > 0 and result["uploads"]["acked"] > 0


def test_no_acknowledged_upload_is_lost(result: dict[str, Any]) -> None:
    assert result["acked_uploads_lost"] == 0, result["uploads"]


def test_the_killed_workers_job_is_finished_by_the_other_and_published_once(result: dict[str, Any]) -> None:
    long_job = result["jobs"]["long"]
    assert long_job["state"] == "succeeded", long_job
    assert long_job["attempts"] >= 2, long_job  # its first worker was killed mid-job
    assert result["jobs"]["short"]["state"] == "succeeded", result["jobs"]  # submitted after the Redis restart
    assert result["jobs_published_twice"] == 0, result["versions"]
    assert all(len(v) == 1 for v in result["versions"].values()), result["versions"]


def test_bad_input_never_gets_a_5xx(result: dict[str, Any]) -> None:
    assert result["bad_input_5xx"] == 0, result["bad_statuses"]
