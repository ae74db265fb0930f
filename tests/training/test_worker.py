"""A job goes through the real queue, trains on clips in the clip store and publishes (real redis, real mp4s)."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest

from training.clips import cache_key
from training.worker import Worker, task_datasets
from vpetl.backbones import create_backbone
from vpetl.data.readers import ClipItem, VideoDataset
from vpetl.data.synth import synthesize
from vpetl.errors import InvalidRequest
from vpetl.store import AdapterStore, ClipStore
from vpetl.store.adapters import redis_client
from vpetl.store.jobs import JobQueue, job_params


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize("appearance", tmp_path_factory.mktemp("synth"), clips_per_class=3, seed=0, size=32,
                      frames=(8, 10))


def _upload(clips: ClipStore, root: Path, task: str, classes: int = 3) -> None:
    names = sorted(p.name for p in root.iterdir() if p.is_dir())[:classes]
    for label in names:
        for i, path in enumerate(sorted((root / label).glob("*.mp4"))):
            clips.add_clip(task, label, "val" if i == 0 else "train", path.read_bytes())


def test_job_trains_publishes_and_reports(redis_url: str, clip_dir: Path, tmp_path: Path) -> None:
    client = redis_client(redis_url)
    clips = ClipStore(tmp_path, client)
    _upload(clips, clip_dir, "demo-task")
    train, val = task_datasets(clips, "demo-task")
    assert len(train) == 6 and len(val) == 3 and train.classes == val.classes
    queue, store = JobQueue(client), AdapterStore(client)
    worker = Worker(create_backbone("videomae-tiny"), queue, store, clips, "w-test")
    job_id = queue.submit(job_params({"task": "demo-task", "method": "adaptmlp", "bottleneck": 8, "epochs": 2,
                                      "batch_size": 2}))
    assert worker.run(max_jobs=1) == 1
    job = queue.get(job_id)
    assert job["state"] == "succeeded", job.get("error")
    assert job["result"]["published"] is True and job["version"] == 1
    assert job["progress"]["epoch"] == 2
    # the curves the console draws: one entry per finished epoch, the last one the final epoch event itself
    history = job["progress"]["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[-1]["loss"] == job["progress"]["loss"] and all(h["loss"] > 0 for h in history)
    assert all(0.0 <= h["val_top1"] <= 1.0 for h in history if "val_top1" in h)
    record = store.get_record("demo-task")
    assert record.version == 1 and record.method == "adaptmlp" and record.num_classes == 3


def _gate_job(worker: Worker, queue: JobQueue, current_top1: float, monkeypatch: pytest.MonkeyPatch,
              **extra: object) -> dict:  # fmt: skip
    """Run one job with the current version's val top-1 fixed, so each branch of the publish gate is forced."""
    monkeypatch.setattr(worker, "_current_top1", lambda *args: current_top1)
    job_id = queue.submit(job_params({"task": "demo-task", "method": "linear", "epochs": 1, "batch_size": 2,
                                      **extra}))  # fmt: skip
    assert worker.run(max_jobs=1) == 1
    return queue.get(job_id)


def test_publish_gate_both_branches(
    redis_url: str, clip_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job publishes only if its val top-1 is not worse than the current version's, unless publish_if_worse."""
    client = redis_client(redis_url)
    clips = ClipStore(tmp_path, client)
    _upload(clips, clip_dir, "demo-task")
    queue, store = JobQueue(client), AdapterStore(client)
    worker = Worker(create_backbone("videomae-tiny"), queue, store, clips, "w-gate")
    first = _gate_job(worker, queue, -1.0, monkeypatch)  # nothing to beat yet (any top-1 ≥ -1)
    assert first["state"] == "succeeded" and first["result"]["published"] is True
    assert store.get_pointer("demo-task") == 1

    worse = _gate_job(worker, queue, 1.01, monkeypatch)  # the current version is unbeatable: refused
    assert worse["state"] == "succeeded" and worse["result"]["published"] is False
    assert "worse" in worse["result"]["reason"] and worse["result"]["current_val_top1"] == 1.01
    assert store.get_pointer("demo-task") == 1 and worse.get("version") is None

    forced = _gate_job(worker, queue, 1.01, monkeypatch, publish_if_worse=True)  # …unless asked to publish anyway
    assert forced["result"]["published"] is True and store.get_pointer("demo-task") == 2 == forced["version"]

    better = _gate_job(worker, queue, -1.0, monkeypatch)
    assert better["result"]["published"] is True and store.get_pointer("demo-task") == 3


def test_a_worker_whose_backbone_is_not_the_registered_one_never_moves_the_pointer(
    redis_url: str, clip_dir: Path, tmp_path: Path
) -> None:
    """The registration changed under a running worker (another backbone registered): its adapter is refused."""
    from vpetl.backbones.identity import backbone_info
    from vpetl.store.backbones import BackboneRegistry

    client = redis_client(redis_url)
    clips = ClipStore(tmp_path, client)
    _upload(clips, clip_dir, "demo-task")
    queue, store = JobQueue(client), AdapterStore(client)
    other = create_backbone("videomae-tiny", seed=9)  # same architecture, other weights
    BackboneRegistry(client).register(backbone_info(other), weights=None, source="test")
    worker = Worker(create_backbone("videomae-tiny"), queue, store, clips, "w-stale")
    job_id = queue.submit(job_params({"task": "demo-task", "method": "linear", "epochs": 1, "batch_size": 2}))
    assert worker.run(max_jobs=1) == 1
    job = queue.get(job_id)
    assert job["state"] == "failed" and "incompatible_adapter" in job["error"] and "registered" in job["error"]
    assert store.get_pointer("demo-task") is None  # no version was published


def test_worker_on_another_node_trains_on_clips_in_s3(
    redis_url: str, clip_dir: Path, tmp_path: Path, s3_bucket: tuple[str, dict]
) -> None:
    """The API process stores clips in S3 (real S3 API, moto); a worker with its own empty data dir, sharing only
    Redis and the bucket, trains on them: nothing is read from or written to either local disk."""
    bucket, options = s3_bucket
    url = f"s3://{bucket}/clips"
    client = redis_client(redis_url)
    api_dir, worker_dir = tmp_path / "api-node", tmp_path / "worker-node"
    _upload(ClipStore(api_dir, client, store_url=url, storage_options=options), clip_dir, "remote-task", classes=2)
    # its own S3 client (not fsspec's cached instance), as in a separate process
    own_client = {**options, "skip_instance_cache": True}
    worker_clips = ClipStore(worker_dir, client, store_url=url, storage_options=own_client)
    train, val = task_datasets(worker_clips, "remote-task")
    assert len(train) == 4 and len(val) == 2 and isinstance(train.items[0].source(), bytes)
    # items survive pickling (DataLoader worker processes get them that way)
    assert pickle.loads(pickle.dumps(train.items[0])).source() == train.items[0].source()
    backbone = create_backbone("videomae-tiny")
    # the decoded-clip cache key depends on content only: store objects (named by sha256) match local copies
    by_sha = {hashlib.sha256(p.read_bytes()).hexdigest(): p for p in clip_dir.rglob("*.mp4")}
    local = VideoDataset([ClipItem(by_sha[it.path.sha256], it.label) for it in train.items], train.classes)
    spec = backbone.input_spec
    assert cache_key(train, spec, train=True, views=1, seed=0) == cache_key(local, spec, train=True, views=1, seed=0)
    queue = JobQueue(client)
    worker = Worker(backbone, queue, AdapterStore(client), worker_clips, "w-remote")
    job_id = queue.submit(job_params({"task": "remote-task", "method": "linear", "epochs": 1, "batch_size": 2}))
    assert worker.run(max_jobs=1) == 1
    job = queue.get(job_id)
    assert job["state"] == "succeeded", job.get("error")
    assert job["result"]["published"] is True
    assert not api_dir.exists() and not worker_dir.exists()


def test_failed_job_reports_why_and_worker_survives(redis_url: str, tmp_path: Path) -> None:
    client = redis_client(redis_url)
    queue = JobQueue(client)
    worker = Worker(create_backbone("videomae-tiny"), queue, AdapterStore(client), ClipStore(tmp_path, client), "w")
    job_id = queue.submit(job_params({"task": "empty-task"}))
    assert worker.run(max_jobs=1) == 1
    job = queue.get(job_id)
    assert job["state"] == "failed" and "invalid_dataset" in job["error"] and "upload" in job["error"]


def test_job_params_validation() -> None:
    with pytest.raises(InvalidRequest):
        job_params({"task": "../x"})
    with pytest.raises(InvalidRequest):
        job_params({"task": "ok", "bogus": 1})
    with pytest.raises(InvalidRequest):
        job_params({"task": "ok", "method": "full"})
    assert job_params({"task": "ok"})["method"] == "bapat"
