"""The clip store on fsspec URLs: a real S3-API server (moto), ``memory://`` and ``file://``.

The same behaviour as the local store (dedup, relabel refusal, counts, listing, delete, names refused before any
I/O), bytes read back through the store (no local path), and interrupted writes never leave an index entry that
names a missing object.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from vpetl.errors import DatasetError, InvalidRequest
from vpetl.store import ClipStore, StoredClip
from vpetl.store import keys as k
from vpetl.store.adapters import redis_client

BACKENDS = ("s3", "memory", "file")


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis_client(redis_url)  # standalone or cluster, whichever redis_url names
    yield client
    client.close()


def _store_args(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> dict:
    if backend == "s3":
        bucket, options = request.getfixturevalue("s3_bucket")
        return {"store_url": f"s3://{bucket}/clips", "storage_options": options}
    if backend == "memory":  # one filesystem per process: a fresh root per test
        return {"store_url": f"memory://vpetl-{uuid.uuid4().hex[:12]}/clips"}
    return {"store_url": f"file://{tmp_path}/shared-store"}


@pytest.fixture(params=BACKENDS)
def clips(request: pytest.FixtureRequest, tmp_path: Path, redis_url: str) -> Iterator[ClipStore]:
    with ClipStore(tmp_path / "data", redis_url, **_store_args(request.param, request, tmp_path)) as store:
        yield store


def objects(store: ClipStore) -> list[str]:
    """Every object under the store root, as keys relative to it."""
    fs, root = store.blobs.fs, store.blobs.root
    fs.invalidate_cache()  # s3fs caches listings; the test wants what the server holds
    if not fs.exists(root):
        return []
    prefix = fs._strip_protocol(root).rstrip("/") + "/"
    return sorted(p[len(prefix):] if p.startswith(prefix) else p for p in fs.find(root))


def test_add_dedup_refuse_count_list_read_delete(clips: ClipStore, raw: redis.Redis) -> None:
    wave1 = clips.add_clip("gestures", "wave", "train", b"wave one")
    clips.add_clip("gestures", "wave", "train", b"wave two")
    clips.add_clip("gestures", "clap hands", "train", b"clap one")
    clips.add_clip("gestures", "wave", "val", b"wave val")
    clips.add_clip("gestures0", "wave", "train", b"wave one")  # a task whose name extends another's

    digest = hashlib.sha256(b"wave one").hexdigest()
    assert wave1.path == f"gestures/train/wave/{digest}.mp4" and not wave1.duplicate
    assert wave1.path in objects(clips) and len(objects(clips)) == 5
    assert clips.read_clip("gestures", "train", "wave", digest) == b"wave one"

    again = clips.add_clip("gestures", "wave", "train", b"wave one")
    assert again.duplicate and again.model_copy(update={"duplicate": False}) == wave1
    for label, split in (("clap", "train"), ("wave", "val")):
        with pytest.raises(InvalidRequest, match="already stored as label 'wave'"):
            clips.add_clip("gestures", label, split, b"wave one")
    assert len(objects(clips)) == 5  # the refused uploads wrote nothing

    assert clips.counts("gestures") == {"train": {"clap hands": 1, "wave": 2}, "val": {"wave": 1}}
    train = clips.list_clips("gestures", "train")
    assert all(isinstance(c, StoredClip) for c in train)
    assert [c.label for c in train] == ["clap hands", "wave", "wave"]
    assert sorted(c.read_bytes() for c in train) == [b"clap one", b"wave one", b"wave two"]
    assert all(c.sha256 == hashlib.sha256(c.read_bytes()).hexdigest() for c in train)
    assert str(train[0]).startswith(clips.blobs.url) and str(train[0]).endswith(".mp4")
    assert [c.read_bytes() for c in clips.list_clips("gestures", "val")] == [b"wave val"]
    assert clips.tasks() == ["gestures", "gestures0"]

    assert clips.delete_task("gestures") == 4
    assert objects(clips) == [f"gestures0/train/wave/{digest}.mp4"]  # the prefix-sharing task is untouched
    assert not raw.exists(k.clips_key("gestures"), k.clip_counts_key("gestures"))
    assert clips.list_clips("gestures", "train") == [] and clips.tasks() == ["gestures0"]
    with pytest.raises(DatasetError, match="not in the clip store"):
        clips.read_clip("gestures", "train", "wave", digest)
    assert clips.delete_task("gestures") == 0  # idempotent


@pytest.mark.parametrize(
    ("task", "label", "split"),
    [("t1", "../escape", "train"), ("t1", "a/b", "train"), ("t1", "wave", "../train"), ("../t1", "wave", "train"),
     ("t1", "", "train"), ("T1", "wave", "train"), ("t1", "nul\x00", "train")],
)
def test_bad_names_are_refused_before_any_io(
    clips: ClipStore, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch, task: str, label: str, split: str
) -> None:
    def no_io(*args: object, **kwargs: object) -> None:
        raise AssertionError("the store was touched")

    for method in ("pipe_file", "cat_file", "exists", "rm", "rm_file", "mkdir", "makedirs"):
        monkeypatch.setattr(clips.blobs.fs, method, no_io)
    monkeypatch.setattr(Path, "exists", no_io)  # the local store's one pre-write check
    with pytest.raises(InvalidRequest):
        clips.add_clip(task, label, split, b"data")
    with pytest.raises(InvalidRequest):
        clips.read_clip(task, split, label, hashlib.sha256(b"data").hexdigest())
    with pytest.raises(InvalidRequest):
        clips.read_clip("t1", "train", "wave", "../" + "0" * 61)
    monkeypatch.undo()
    assert objects(clips) == [] and raw.dbsize() == 0


def _fail_index_writes(store: ClipStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the index's scripted write fail (the connection drops) while reads still work."""
    real = store.redis.execute_command

    def execute(*args: object, **kwargs: object) -> object:
        if str(args[0]).upper() in ("EVALSHA", "EVAL", "FCALL"):
            raise redis.ConnectionError("connection lost")
        return real(*args, **kwargs)

    monkeypatch.setattr(store.redis, "execute_command", execute)


def test_interrupted_index_write_leaves_no_entry(
    clips: ClipStore, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_index_writes(clips, monkeypatch)
    with pytest.raises(redis.ConnectionError):
        clips.add_clip("t1", "wave", "train", b"clip bytes")
    # the object may stay (unnamed); the index names nothing (tasks() skips a name with no clips behind it)
    assert not raw.exists(k.clips_key("t1"), k.clip_counts_key("t1"))
    assert clips.list_clips("t1", "train") == [] and clips.tasks() == []
    monkeypatch.undo()
    record = clips.add_clip("t1", "wave", "train", b"clip bytes")  # the retry reuses or rewrites the object
    assert not record.duplicate
    assert [c.read_bytes() for c in clips.list_clips("t1", "train")] == [b"clip bytes"]


def test_failed_object_write_leaves_no_entry_and_no_object(
    clips: ClipStore, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("store unavailable")

    if clips.blobs.local:
        monkeypatch.setattr("os.replace", broken)  # the temp file is written, the rename fails
    else:
        monkeypatch.setattr(clips.blobs.fs, "pipe_file", broken)
    with pytest.raises(OSError, match="store unavailable"):
        clips.add_clip("t1", "wave", "train", b"clip bytes")
    monkeypatch.undo()
    assert objects(clips) == [] and raw.dbsize() == 0


def test_endpoint_and_credentials_from_aws_environment(
    s3_bucket: tuple[str, dict], redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No storage options: s3fs/botocore take endpoint and keys from the standard AWS variables (what a deployment
    sets next to VPETL_CLIP_STORE)."""
    import s3fs

    bucket, options = s3_bucket
    monkeypatch.setenv("AWS_ENDPOINT_URL", options["endpoint_url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3fs.S3FileSystem.clear_instance_cache()  # fsspec caches filesystems by arguments, not by environment
    try:
        with ClipStore(tmp_path, redis_url, store_url=f"s3://{bucket}/env") as store:
            record = store.add_clip("t1", "wave", "train", b"via env")
            assert store.read_clip("t1", "train", "wave", record.sha256) == b"via env"
        assert s3fs.S3FileSystem(**options).cat_file(f"{bucket}/env/{record.path}") == b"via env"
        assert not (tmp_path / "clips").exists()
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
