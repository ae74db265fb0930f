"""Demo-backbone pretraining with a reduced recipe: it writes a loadable backbone, and is cached by content hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.pretrain import PretrainConfig, ensure_demo_backbone, pretrain_demo, pretrain_key
from vpetl.backbones import create_backbone

TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2}
CONFIG = PretrainConfig(clips_per_class=2, frames=(16, 20), epochs=1, batch_size=8, num_workers=1,
                        backbone_overrides=TINY)


def test_pretrain_writes_a_backbone_and_the_second_call_is_instant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = pretrain_demo(CONFIG, tmp_path, progress=False, log_path=tmp_path / "log.jsonl")
    assert not first.cached and first.path.is_file() and first.path.with_suffix(".json").is_file()
    assert 0.0 <= first.val_top1 <= 1.0 and first.total_time_s >= first.train_time_s > 0
    # clips are rendered in memory: the cache holds the backbone and its sidecar, nothing else
    assert {p.name for p in tmp_path.iterdir()} == {first.path.name, first.path.with_suffix(".json").name, "log.jsonl"}
    backbone = create_backbone("vpetl-demo", checkpoint=first.path, **TINY)
    assert backbone.sha256() == first.backbone_sha256
    assert backbone.sha256() != create_backbone("vpetl-demo", **TINY).sha256()  # the weights did change

    def never(*args: object, **kwargs: object) -> None:  # the cause of "instant": nothing rendered or trained
        raise AssertionError("a cached backbone was rendered or trained again")

    monkeypatch.setattr("training.pretrain._render", never)
    monkeypatch.setattr("training.pretrain.fit", never)
    second = pretrain_demo(CONFIG, tmp_path, progress=False)
    assert second.cached and second.path == first.path and second.backbone_sha256 == first.backbone_sha256
    assert ensure_demo_backbone(tmp_path, progress=False, config=CONFIG) == first.path


def test_cache_key_covers_recipe_seed_and_architecture() -> None:
    key = pretrain_key(CONFIG)
    assert key == pretrain_key(PretrainConfig(**{**CONFIG.__dict__}))
    assert key != pretrain_key(PretrainConfig(**{**CONFIG.__dict__, "seed": 1}))
    assert key != pretrain_key(PretrainConfig(**{**CONFIG.__dict__, "epochs": 2}))
    assert key != pretrain_key(PretrainConfig(**{**CONFIG.__dict__, "backbone_overrides": {**TINY, "depth": 2}}))


def test_same_seed_gives_the_same_backbone_bytes(tmp_path: Path) -> None:
    """Deterministic end to end (rendering, augmentation, order, init, CPU training): two cold runs agree."""
    one = pretrain_demo(CONFIG, tmp_path / "one", progress=False)
    two = pretrain_demo(CONFIG, tmp_path / "two", progress=False)
    assert not one.cached and not two.cached
    assert one.backbone_sha256 == two.backbone_sha256 and one.path.read_bytes() == two.path.read_bytes()
    other = pretrain_demo(PretrainConfig(**{**CONFIG.__dict__, "seed": 1}), tmp_path / "three", progress=False)
    assert other.backbone_sha256 != one.backbone_sha256
