"""The job queue on a real redis-server: submit, claim, progress, ack, and takeover of a dead worker's job."""

from __future__ import annotations

import time

import pytest

from vpetl.errors import InvalidRequest
from vpetl.store.adapters import redis_client
from vpetl.store.jobs import STREAM, JobQueue, UnknownJob


@pytest.fixture
def queue(redis_url: str) -> JobQueue:
    return JobQueue(redis_client(redis_url))


def test_submit_then_claim_run_ack(queue: JobQueue) -> None:
    job_id = queue.submit({"task": "t", "method": "bapat"})
    assert queue.get(job_id)["state"] == "queued"
    claimed = queue.claim_next("w1", block_ms=100)
    assert claimed is not None and claimed[1] == job_id
    job = queue.start(job_id, "w1")
    assert job["state"] == "running" and job["attempts"] == 1 and job["worker"] == "w1"
    queue.update(job_id, progress={"epoch": 1, "loss": 0.5})
    assert queue.get(job_id)["progress"] == {"epoch": 1, "loss": 0.5}
    queue.update(job_id, state="succeeded", result={"version": 1})
    queue.ack(claimed[0])
    assert queue.redis.xpending(STREAM, "workers")["pending"] == 0
    assert queue.claim_next("w1", block_ms=100) is None
    assert [j["id"] for j in queue.list()] == [job_id]


def test_dead_workers_job_is_reclaimed_by_another(queue: JobQueue) -> None:
    job_id = queue.submit({"task": "t"})
    entry, got = queue.claim_next("dies", block_ms=100)  # type: ignore[misc]
    assert got == job_id
    queue.start(job_id, "dies")  # ... and the worker dies here: no ack
    assert queue.claim_next("other", block_ms=100, claim_idle_ms=60_000) is None  # not idle long enough yet
    time.sleep(0.15)
    again = queue.claim_next("other", block_ms=100, claim_idle_ms=100)
    assert again == (entry, job_id)
    assert queue.start(job_id, "other")["attempts"] == 2


def test_unknown_and_malformed_job_ids(queue: JobQueue) -> None:
    with pytest.raises(UnknownJob):
        queue.get("0123456789abcdef")
    with pytest.raises(InvalidRequest):
        queue.get("../etc/passwd")
