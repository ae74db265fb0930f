"""The edge cache: ETag/304, a sync with nothing new moves no adapter bytes (counted on both ends), only changed
tasks are fetched, integrity checks, atomic files, pruning, the backbone graph fetched once."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from edge_helpers import make_adapter
from fake_server import FakeServer

from edge_client.cache import EdgeCache, default_cache_dir
from edge_client.sdk import Client
from vpetl.errors import InvalidAdapter, InvalidRequest, UnknownTask


@pytest.fixture(scope="module")
def adapters() -> dict[str, bytes]:
    return {
        "hmdb": make_adapter("bapat", {"bottleneck": 4}, task="hmdb", seed=1)[1],
        "ssv2": make_adapter("lora", {"rank": 2}, task="ssv2", seed=2)[1],
        "hmdb-v2": make_adapter("bapat", {"bottleneck": 4}, task="hmdb", seed=3)[1],
    }


def test_sync_with_nothing_new_transfers_no_adapter_bytes(fake: FakeServer, adapters: dict[str, bytes],
                                                          tmp_path: Path, tiny_graphs: dict[str, Path]) -> None:
    fake.state.publish("hmdb", adapters["hmdb"])
    fake.state.publish("ssv2", adapters["ssv2"])
    fake.state.onnx["default"] = tiny_graphs["bapat"].read_bytes()
    cache = EdgeCache(tmp_path / "cache")
    with Client(fake.url) as client:
        first = cache.sync(client)
        assert first.adapters == {"hmdb": "updated", "ssv2": "updated"} and first.backbone == "downloaded"
        assert first.adapter_bytes == len(adapters["hmdb"]) + len(adapters["ssv2"]) == fake.state.sent["adapter"]
        assert first.onnx_bytes == tiny_graphs["bapat"].stat().st_size
        record = cache.backbone_record()
        assert record is not None and record["family"] == "bapat" and "patt" in record["components"]

        sent = dict(fake.state.sent)
        second = cache.sync(client)
        assert second.adapters == {"hmdb": "unchanged", "ssv2": "unchanged"} and second.backbone == "present"
        assert (second.adapter_bytes, second.onnx_bytes) == (0, 0)
        assert fake.state.sent["adapter"] == sent["adapter"] and fake.state.sent["onnx"] == sent["onnx"]
        assert second.requests == 1  # only the listing

        fake.state.publish("hmdb", adapters["hmdb-v2"])  # a new version of one task
        third = cache.sync(client)
        assert third.adapters == {"hmdb": "updated", "ssv2": "unchanged"}
        assert third.adapter_bytes == len(adapters["hmdb-v2"])
    entry = cache.adapter("hmdb")
    assert entry is not None and entry.version == 2 and entry.sha256 == hashlib.sha256(adapters["hmdb-v2"]).hexdigest()
    assert cache.read_adapter_bytes("hmdb") == adapters["hmdb-v2"]
    files = {p.name for p in (cache.root / "adapters" / "hmdb").iterdir()}
    assert files == {"current.json", f"{entry.sha256}.safetensors"}  # the old version's file is gone
    assert not list(cache.root.rglob("*.tmp")) and not list(cache.root.rglob("*.part"))


def test_pull_uses_if_none_match(fake: FakeServer, adapters: dict[str, bytes], tmp_path: Path) -> None:
    fake.state.publish("hmdb", adapters["hmdb"])
    cache = EdgeCache(tmp_path)
    with Client(fake.url) as client:
        entry, changed = cache.pull_adapter(client, "hmdb")
        assert changed and entry.version == 1 and entry.method == "bapat"
        before = client.stats.adapter_bytes
        entry2, changed2 = cache.pull_adapter(client, "hmdb")
        assert not changed2 and entry2 == entry and client.stats.adapter_bytes == before
        fake.state.publish("hmdb", adapters["hmdb-v2"])
        entry3, changed3 = cache.pull_adapter(client, "hmdb", version=1)  # an explicit old version: same bytes
        assert not changed3 and entry3.version == 1
        entry4, changed4 = cache.pull_adapter(client, "hmdb")
        assert changed4 and entry4.version == 2


def test_integrity_checks(adapters: dict[str, bytes], tmp_path: Path) -> None:
    cache = EdgeCache(tmp_path)
    with pytest.raises(InvalidAdapter, match="ETag"):
        cache.put_adapter("hmdb", adapters["hmdb"], version=1, etag="0" * 64)
    assert cache.adapter("hmdb") is None  # nothing stored
    with pytest.raises(InvalidAdapter):
        cache.put_adapter("hmdb", b"not an adapter at all", version=1)
    entry = cache.put_adapter("hmdb", adapters["hmdb"], version=1, etag=hashlib.sha256(adapters["hmdb"]).hexdigest())
    assert cache.load_adapter("hmdb").meta.task == "hmdb"
    blob = cache.adapter_path("hmdb")
    damaged = bytearray(blob.read_bytes())
    damaged[-1] ^= 0xFF
    blob.write_bytes(bytes(damaged))
    with pytest.raises(InvalidAdapter, match="damaged"):
        cache.read_adapter_bytes("hmdb")
    assert json.loads((blob.parent / "current.json").read_text())["sha256"] == entry.sha256
    with pytest.raises(InvalidRequest):
        cache.adapter("../etc")
    with pytest.raises(UnknownTask):
        cache.adapter_path("nothing")


def test_sync_prunes_tasks_the_server_dropped(fake: FakeServer, adapters: dict[str, bytes], tmp_path: Path) -> None:
    fake.state.publish("hmdb", adapters["hmdb"])
    fake.state.publish("ssv2", adapters["ssv2"])
    cache = EdgeCache(tmp_path)
    with Client(fake.url) as client:
        cache.sync(client, backbone=False)
        del fake.state.current["ssv2"], fake.state.adapters["ssv2"]
        report = cache.sync(client, backbone=False)
    assert report.adapters == {"hmdb": "unchanged", "ssv2": "removed"}
    assert cache.tasks() == ["hmdb"]


def test_default_cache_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VPETL_EDGE_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("VPETL_EDGE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "vpetl-edge"


def test_sync_in_float16_halves_the_bytes_and_stays_current(fake: FakeServer, adapters: dict[str, bytes],
                                                            tmp_path: Path) -> None:
    from vpetl.artifact import read_adapter

    fake.state.publish("hmdb", adapters["hmdb"])
    cache = EdgeCache(tmp_path / "cache")
    with Client(fake.url) as client:
        first = cache.sync(client, backbone=False, dtype="float16")
        assert first.adapters == {"hmdb": "updated"}
        assert first.adapter_bytes < 0.6 * len(adapters["hmdb"])  # fp16 tensors + the same header
        entry = cache.adapter("hmdb")
        assert entry is not None and entry.dtype == "float16" and entry.version == 1
        assert entry.server_sha256 == hashlib.sha256(adapters["hmdb"]).hexdigest() != entry.sha256
        half, full = read_adapter(cache.read_adapter_bytes("hmdb")), read_adapter(adapters["hmdb"])
        assert half.dtype == "float16" and half.meta == full.meta
        for name, tensor in full.tensors.items():
            assert abs(half.tensors[name] - tensor).max() <= 1e-3 * max(1.0, abs(tensor).max())

        again = cache.sync(client, backbone=False, dtype="float16")  # the listing says fp16 copy is current
        assert again.adapters == {"hmdb": "unchanged"} and again.adapter_bytes == 0 and again.requests == 1
        _, moved = cache.pull_adapter(client, "hmdb", dtype="float16")  # conditional GET on the fp16 ETag
        assert not moved
        full_sync = cache.sync(client, backbone=False)  # asking for the stored dtype replaces the fp16 copy
        assert full_sync.adapters == {"hmdb": "updated"} and full_sync.adapter_bytes == len(adapters["hmdb"])
    assert cache.read_adapter_bytes("hmdb") == adapters["hmdb"]
