"""The job queue's exactly-once parts on a real Redis (standalone and cluster): begin (skip finished jobs, count
attempts, give up and dead-letter), a heartbeat that keeps a claim without stealing one, finish (state + ack)."""

from __future__ import annotations

import time

import pytest

from vpetl.store.adapters import redis_client
from vpetl.store.jobs import DEAD_LETTER, GROUP, STREAM, JobQueue


@pytest.fixture
def queue(redis_url: str) -> JobQueue:
    return JobQueue(redis_client(redis_url))


def pending(queue: JobQueue) -> int:
    return int(queue.redis.xpending(STREAM, GROUP)["pending"])


def test_attempts_are_bounded_then_the_job_is_dead_lettered(queue: JobQueue) -> None:
    job_id = queue.submit({"task": "t"})
    entry, _ = queue.claim_next("w1", block_ms=100)  # type: ignore[misc]
    for attempt in (1, 2):  # each worker starts the job and dies: no finish, no ack
        outcome, job = queue.begin(entry, job_id, f"w{attempt}", max_attempts=2)
        assert outcome == "run" and job is not None and job["attempts"] == attempt and job["state"] == "running"
    outcome, job = queue.begin(entry, job_id, "w3", max_attempts=2)
    assert outcome == "dead" and job is not None
    assert job["state"] == "failed" and job["attempts"] == 2 and "[max_attempts]" in job["error"]
    assert "w2" in job["error"] and DEAD_LETTER in job["error"]  # which worker died last, where to look
    (letter,) = queue.dead_letters()
    assert letter["id"] == job["dead_letter"] and letter["job_id"] == job_id and letter["attempts"] == "2"
    assert letter["entry"] == entry and letter["error"] == job["error"]
    assert pending(queue) == 0  # acked: nobody reclaims it again


def test_a_finished_job_redelivered_is_acked_and_skipped(queue: JobQueue) -> None:
    job_id = queue.submit({"task": "t"})
    entry, _ = queue.claim_next("w1", block_ms=100)  # type: ignore[misc]
    assert queue.begin(entry, job_id, "w1")[0] == "run"
    queue.update(job_id, state="succeeded", version=4)  # ... and the worker dies before acking
    time.sleep(0.12)
    assert queue.claim_next("w2", block_ms=100, claim_idle_ms=100) == (entry, job_id)
    outcome, job = queue.begin(entry, job_id, "w2")
    assert outcome == "done" and job is not None and job["attempts"] == 1 and job["worker"] == "w1"
    assert pending(queue) == 0 and queue.claim_next("w3", block_ms=50, claim_idle_ms=0) is None


def test_finish_writes_the_state_and_acks_together(queue: JobQueue) -> None:
    job_id = queue.submit({"task": "t"})
    entry, _ = queue.claim_next("w1", block_ms=100)  # type: ignore[misc]
    queue.begin(entry, job_id, "w1")
    queue.finish(job_id, entry, "succeeded", result={"version": 1}, version=1)
    job = queue.get(job_id)
    assert (job["state"], job["version"], job["result"]) == ("succeeded", 1, {"version": 1}) and "finished_at" in job
    assert pending(queue) == 0
    with pytest.raises(ValueError):
        queue.finish(job_id, entry, "running")


def test_heartbeat_keeps_the_claim_and_never_steals_one(queue: JobQueue) -> None:
    job_id = queue.submit({"task": "t"})
    entry, _ = queue.claim_next("w1", block_ms=100)  # type: ignore[misc]
    for _ in range(3):  # beats closer together than the claim timeout: the entry never gets idle enough
        time.sleep(0.08)
        assert queue.heartbeat(entry, "w1")
        assert queue.claim_next("w2", block_ms=10, claim_idle_ms=150) is None
    time.sleep(0.2)  # w1 stalls past the timeout and w2 takes over
    assert queue.claim_next("w2", block_ms=10, claim_idle_ms=150) == (entry, job_id)
    assert not queue.heartbeat(entry, "w1")  # w1 learns it lost the job, and w2 keeps it
    (row,) = queue.redis.xpending_range(STREAM, GROUP, min=entry, max=entry, count=1)
    assert row["consumer"] in (b"w2", "w2")
    queue.ack(entry)
    assert not queue.heartbeat(entry, "w2")  # acked: nothing to keep
