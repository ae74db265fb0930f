"""Redelivered jobs, in process on a real Redis: a finished job is acked and skipped, a job whose earlier attempt
already published is finished without retraining (see test_worker_processes.py for real worker processes)."""

from __future__ import annotations

import time
from pathlib import Path

from training.worker import Worker
from vpetl.backbones import create_backbone
from vpetl.store import AdapterStore, ClipStore
from vpetl.store.adapters import redis_client
from vpetl.store.jobs import GROUP, STREAM, JobQueue, job_params


def _worker(redis_url: str, tmp_path: Path, name: str) -> Worker:
    client = redis_client(redis_url)
    clips = ClipStore(tmp_path, client)
    backbone = create_backbone("videomae-tiny")
    return Worker(backbone, JobQueue(client), AdapterStore(client), clips, name, claim_idle_ms=100)


def test_redelivered_succeeded_job_is_acked_and_skipped(redis_url: str, tmp_path: Path) -> None:
    worker = _worker(redis_url, tmp_path, "w1")
    queue, store = worker.queue, worker.store
    job_id = queue.submit(job_params({"task": "done-task"}))
    entry, _ = queue.claim_next("w1", block_ms=100)  # type: ignore[misc]
    queue.begin(entry, job_id, "w1")
    store.publish("done-task", b"the adapter", {"method": "bapat"}, job_id=job_id)
    queue.update(job_id, state="succeeded", version=1)  # ... the worker dies before its ack
    time.sleep(0.15)
    before = queue.get(job_id)
    other = _worker(redis_url, tmp_path, "w2")
    assert other.queue.claim_next("w2", block_ms=100, claim_idle_ms=100) == (entry, job_id)
    assert other.run_one(entry, job_id) == "done"
    assert queue.redis.xpending(STREAM, GROUP)["pending"] == 0
    after = queue.get(job_id)
    assert after["attempts"] == before["attempts"] == 1 and after["state"] == "succeeded"
    assert [r.version for r in store.history("done-task")] == [1]


def test_job_that_published_before_its_worker_died_is_finished_without_training(
    redis_url: str, tmp_path: Path
) -> None:
    worker = _worker(redis_url, tmp_path, "w2")
    queue, store = worker.queue, worker.store
    job_id = queue.submit(job_params({"task": "half-done"}))  # no clips: training again would fail the job
    entry, _ = queue.claim_next("w1", block_ms=100)  # type: ignore[misc]
    queue.begin(entry, job_id, "w1")
    published = store.publish("half-done", b"attempt one", {"method": "bapat"}, job_id=job_id)  # ... and dies
    time.sleep(0.15)
    assert worker.run(max_jobs=1) == 1
    job = queue.get(job_id)
    assert job["state"] == "succeeded", job.get("error")
    assert job["attempts"] == 2 and job["worker"] == "w2" and job["version"] == published.version == 1
    assert job["result"]["sha256"] == published.sha256 and "earlier attempt" in job["result"]["reason"]
    assert [r.version for r in store.history("half-done")] == [1]
    assert queue.redis.xpending(STREAM, GROUP)["pending"] == 0
