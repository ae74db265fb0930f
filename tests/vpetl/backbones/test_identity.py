"""One backbone per deployment: registration in a real Redis, weights through Redis to a process with an empty
disk, and refusals (another name, other weights, nothing registered and no weights of its own)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import torch

from vpetl.backbones import create_backbone
from vpetl.backbones.checkpoint import save_backbone
from vpetl.backbones.identity import resolve_backbone
from vpetl.store import backbones as registry_module
from vpetl.store.backbones import (
    IDENTITY_KEY,
    BackboneMismatch,
    BackboneNotRegistered,
    BackboneRegistry,
    chunk_key,
)

NAME = "videomae-tiny"


@pytest.fixture
def registry(redis_url: str) -> Iterator[BackboneRegistry]:
    client = redis.Redis.from_url(redis_url)
    yield BackboneRegistry(client)
    client.close()


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A tiny backbone with weights that are NOT its seeded init (as a pretrained file would be)."""
    model = create_backbone(NAME, seed=7)
    path = tmp_path / "pretrained.safetensors"
    save_backbone(model, path)
    return path


def test_first_process_registers_its_checkpoint_and_another_node_loads_it_from_redis(
    registry: BackboneRegistry, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_module, "CHUNK_BYTES", 64 << 10)  # several chunks even for a tiny model
    first, record = resolve_backbone(NAME, checkpoint, registry, tmp_path / "node-a")
    assert record.weights == "blob" and record.chunks > 2 and record.sha256 == first.sha256()
    assert record.sha256 != create_backbone(NAME).sha256()  # really the checkpoint, not the seeded init
    assert record.input_spec == first.input_spec and record.name == NAME

    # another node: no checkpoint, its own empty cache dir — the weights come from Redis
    node_b = tmp_path / "node-b"
    second, again = resolve_backbone(NAME, None, registry, node_b)
    assert again == record and second.sha256() == first.sha256()
    spec = second.input_spec
    clips = torch.randn(2, 3, spec.num_frames, spec.size, spec.size)  # (B, C, T, H, W)
    with torch.no_grad():
        assert torch.equal(first(clips), second(clips))
    cached = list(node_b.glob("*.safetensors"))
    assert [p.name for p in cached] == [f"{NAME}-{record.weights_sha256}.safetensors"]
    assert hashlib.sha256(cached[0].read_bytes()).hexdigest() == record.weights_sha256


def test_a_seeded_backbone_registers_without_weights(registry: BackboneRegistry, tmp_path: Path) -> None:
    backbone, record = resolve_backbone(NAME, None, registry, tmp_path)
    assert record.weights == "seeded" and record.chunks == 0 and record.sha256 == backbone.sha256()
    assert list(registry.redis.scan_iter(match=chunk_key("*", 0).replace("*:0", "*"))) == []
    _, again = resolve_backbone(NAME, None, registry, tmp_path / "other")
    assert again == record


def test_another_backbone_name_is_refused(registry: BackboneRegistry, tmp_path: Path) -> None:
    resolve_backbone(NAME, None, registry, tmp_path)
    with pytest.raises(BackboneMismatch, match="--backbone videomae-tiny"):
        resolve_backbone("vit-tiny", None, registry, tmp_path)


def test_other_weights_are_refused_and_the_registration_is_unchanged(
    registry: BackboneRegistry, checkpoint: Path, tmp_path: Path
) -> None:
    _, record = resolve_backbone(NAME, checkpoint, registry, tmp_path)
    before = registry.redis.get(IDENTITY_KEY)
    other = tmp_path / "other.safetensors"
    save_backbone(create_backbone(NAME, seed=8), other)
    with pytest.raises(BackboneMismatch, match="this deployment serves"):
        resolve_backbone(NAME, other, registry, tmp_path)
    assert registry.redis.get(IDENTITY_KEY) == before
    assert registry.get() == record


def test_a_backbone_that_needs_weights_waits_then_refuses_with_the_command(
    registry: BackboneRegistry, tmp_path: Path
) -> None:
    with pytest.raises(BackboneNotRegistered, match="vpetl backbone register"):
        resolve_backbone("vpetl-demo", None, registry, tmp_path, wait_s=0.3)
    assert registry.get() is None  # a random-init demo backbone is never registered


def test_a_waiting_process_starts_once_another_registers(
    registry: BackboneRegistry, tmp_path: Path
) -> None:
    demo = create_backbone("vpetl-demo", seed=3)  # stands in for the pretrained file
    path = tmp_path / "demo.safetensors"
    save_backbone(demo, path)
    timer = threading.Timer(0.5, lambda: resolve_backbone("vpetl-demo", path, registry, tmp_path / "a"))
    timer.start()
    try:
        backbone, record = resolve_backbone("vpetl-demo", None, registry, tmp_path / "b", wait_s=20)
    finally:
        timer.join()
    assert backbone.sha256() == demo.sha256() == record.sha256


def test_concurrent_registrations_leave_exactly_one_and_no_orphan_chunks(
    registry: BackboneRegistry, tmp_path: Path
) -> None:
    paths = []
    for seed in (1, 2):
        paths.append(tmp_path / f"w{seed}.safetensors")
        save_backbone(create_backbone(NAME, seed=seed), paths[-1])
    results: list[object] = []

    def go(path: Path) -> None:
        try:
            results.append(resolve_backbone(NAME, path, registry, tmp_path / path.stem)[1])
        except BackboneMismatch as e:
            results.append(e)

    threads = [threading.Thread(target=go, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if not isinstance(r, Exception)]
    assert len(winners) == 1 and len(results) == 2  # the loser's different weights are refused
    record = registry.get()
    assert record is not None and record == winners[0]
    chunk_keys = {k.decode() for k in registry.redis.scan_iter(match="vpetl:{backbone}:weights:*")}
    assert chunk_keys == {chunk_key(record.weights_sha256 or "", i) for i in range(record.chunks)}


def test_corrupted_weights_in_redis_are_refused(registry: BackboneRegistry, checkpoint: Path, tmp_path: Path) -> None:
    _, record = resolve_backbone(NAME, checkpoint, registry, tmp_path / "a")
    registry.redis.set(chunk_key(record.weights_sha256 or "", 0), b"not the weights")
    with pytest.raises(BackboneNotRegistered, match="do not match"):
        resolve_backbone(NAME, None, registry, tmp_path / "b")
    registry.redis.delete(chunk_key(record.weights_sha256 or "", 0))
    with pytest.raises(BackboneNotRegistered, match="incomplete"):
        resolve_backbone(NAME, None, registry, tmp_path / "c")


def test_a_reduced_input_spec_is_registered_and_every_process_serves_at_it(
    registry: BackboneRegistry, tmp_path: Path
) -> None:
    default = create_backbone(NAME).input_spec
    reduced = default.model_copy(update={"num_frames": 2, "size": 16})
    first, record = resolve_backbone(NAME, None, registry, tmp_path, input_spec=reduced)
    assert record.input_spec == reduced == first.input_spec
    other, _ = resolve_backbone(NAME, None, registry, tmp_path / "b")  # no spec asked: the registered one
    assert other.input_spec == reduced and other.sha256() == first.sha256()
    with pytest.raises(BackboneMismatch, match="asks for input 4×32²"):
        resolve_backbone(NAME, None, registry, tmp_path / "c", input_spec=default)
