"""Exactly-once training with real ``vpetl worker`` processes on one real redis-server (TCP, as in compose).

(a) a worker SIGKILLed mid-job: another takes the job over after ``--claim-idle-ms`` and it ends succeeded with
    exactly one published version;
(b) two live workers, one job much longer than the claim timeout: one training run (attempts == 1), one version;
(c) a job that kills its worker every time: failed after ``--max-attempts``, dead-lettered, acked.

Long jobs and crashing jobs come from the worker's fault-injection hooks (``VPETL_TEST_EPOCH_DELAY_S``,
``VPETL_TEST_CRASH_TASK``; see training/worker.py). The assertions are on causes — versions, attempts, which
worker ran the job, exit signals — never on wall time; the deadlines only bound a hung test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vpetl.data.synth import synthesize
from vpetl.store import AdapterStore, ClipStore, EmbeddedRedis
from vpetl.store.adapters import redis_client
from vpetl.store.jobs import GROUP, STREAM, JobQueue, job_params

pytestmark = [pytest.mark.integration]

BIN = Path(sys.executable).parent
CLAIM_IDLE_MS = 1500
DEADLINE_S = 90.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Workers:
    """``vpetl worker`` processes (each in its own process group, log under the tmp dir), stopped at the end."""

    def __init__(self, root: Path, redis_url: str) -> None:
        self.root, self.redis_url = root, redis_url
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("VPETL_")}

    def start(self, name: str, *flags: str, **env: str) -> subprocess.Popen[bytes]:
        args = [str(BIN / "vpetl"), "worker", "--redis-url", self.redis_url, "--backbone", "videomae-tiny",
                "--data-dir", str(self.root / "data"), "--threads", "1", "--name", name,
                "--claim-idle-ms", str(CLAIM_IDLE_MS), *flags]  # fmt: skip
        with (self.root / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**self.env, **env},
                                    start_new_session=True)  # fmt: skip
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{self.log(name)[-2000:]}" for name in self.procs)

    def kill(self, name: str) -> None:
        os.killpg(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture(scope="module")
def redis_tcp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with EmbeddedRedis(tmp_path_factory.mktemp("redis"), port=_free_port()) as server:
        yield server.url


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize("appearance", tmp_path_factory.mktemp("synth"), clips_per_class=3, seed=0, size=32,
                      frames=(8, 10))  # fmt: skip


@pytest.fixture
def setup(redis_tcp: str, synth_root: Path, tmp_path: Path) -> Iterator[tuple[Workers, JobQueue, AdapterStore, Any]]:
    """Empty Redis, clips of two tasks uploaded to the data dir the workers share, and the worker pool."""
    client = redis_client(redis_tcp)
    client.flushall()
    clips = ClipStore(tmp_path / "data", client)
    labels = sorted(p.name for p in synth_root.iterdir() if p.is_dir())[:2]
    for task in ("long", "crashy"):
        for label in labels:
            for i, path in enumerate(sorted((synth_root / label).glob("*.mp4"))):
                clips.add_clip(task, label, "val" if i == 0 else "train", path.read_bytes())
    workers = Workers(tmp_path, redis_tcp)
    try:
        yield workers, JobQueue(client), AdapterStore(client), client
    finally:
        workers.stop()
        client.close()


def wait_for(what: str, ready: Callable[[], bool], workers: Workers) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{workers.logs()}"
        time.sleep(0.1)


def _job(task: str, epochs: int) -> dict[str, Any]:
    return job_params({"task": task, "method": "linear", "epochs": epochs, "batch_size": 2, "publish_if_worse": True})


def test_a_killed_workers_job_is_taken_over_and_published_once(setup: Any) -> None:
    workers, queue, store, client = setup
    workers.start("slow", VPETL_TEST_EPOCH_DELAY_S="1.0")  # 1 s per epoch: a job far longer than the timeout
    job_id = queue.submit(_job("long", epochs=6))
    wait_for("the job to be mid-training on 'slow'", lambda: queue.get(job_id).get("progress", {}).get("epoch", 0)
             >= 1, workers)  # fmt: skip
    workers.start("rescuer")  # waits while 'slow' is alive: its heartbeat keeps the claim
    wait_for("the rescuer to be up", lambda: "waiting for jobs" in workers.log("rescuer"), workers)
    assert queue.get(job_id)["worker"] == "slow" and queue.get(job_id)["attempts"] == 1
    workers.kill("slow")
    wait_for("the job to finish", lambda: queue.get(job_id)["state"] in ("succeeded", "failed"), workers)
    job = queue.get(job_id)
    assert job["state"] == "succeeded", job.get("error")
    assert job["attempts"] == 2 and job["worker"] == "rescuer" and job["version"] == 1
    assert [r.version for r in store.history("long")] == [1] and store.job_version("long", job_id) == 1
    assert client.xpending(STREAM, GROUP)["pending"] == 0


def test_two_live_workers_train_a_long_job_once(setup: Any) -> None:
    workers, queue, store, client = setup
    for name in ("w1", "w2"):
        workers.start(name, VPETL_TEST_EPOCH_DELAY_S="1.0")
    for name in ("w1", "w2"):
        wait_for(f"{name} to be up", lambda n=name: "waiting for jobs" in workers.log(n), workers)
    job_id = queue.submit(_job("long", epochs=4))  # ≥ 4 s of training against a 1.5 s claim timeout
    wait_for("the job to finish", lambda: queue.get(job_id)["state"] in ("succeeded", "failed"), workers)
    job = queue.get(job_id)
    assert job["state"] == "succeeded", job.get("error")
    ran, idle = ("w1", "w2") if job["worker"] == "w1" else ("w2", "w1")
    assert job["attempts"] == 1 and job["version"] == 1
    assert [r.version for r in store.history("long")] == [1]
    assert f"job {job_id}: attempt 1 of 3 on {ran}" in workers.log(ran)
    assert job_id not in workers.log(idle)  # the other worker never touched it
    assert client.xpending(STREAM, GROUP)["pending"] == 0


def test_a_job_that_kills_its_worker_is_dead_lettered_after_max_attempts(setup: Any) -> None:
    workers, queue, store, client = setup
    names = ("c1", "c2", "c3")
    for name in names:  # every worker crashes on this task: two attempts kill two of them, the third gives up
        workers.start(name, "--max-attempts", "2", VPETL_TEST_CRASH_TASK="crashy")
    for name in names:
        wait_for(f"{name} to be up", lambda n=name: "waiting for jobs" in workers.log(n), workers)
    job_id = queue.submit(_job("crashy", epochs=1))
    wait_for("the job to be given up", lambda: queue.get(job_id)["state"] in ("succeeded", "failed"), workers)
    job = queue.get(job_id)
    assert job["state"] == "failed" and job["attempts"] == 2 and "[max_attempts]" in job["error"], job
    (letter,) = queue.dead_letters()
    assert letter["job_id"] == job_id and letter["id"] == job["dead_letter"]
    dead = [n for n in names if workers.procs[n].poll() is not None]
    assert sorted(workers.procs[n].returncode for n in dead) == [-signal.SIGKILL] * 2, workers.logs()
    assert client.xpending(STREAM, GROUP)["pending"] == 0
    assert store.job_version("crashy", job_id) is None and store.get_pointer("crashy") is None
