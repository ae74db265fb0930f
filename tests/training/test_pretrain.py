"""Demo-backbone pretraining with a reduced recipe: it writes a loadable backbone, and is cached by content hash."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from training.pretrain import PretrainConfig, _Classifier, ensure_demo_backbone, pretrain_demo, pretrain_key, tubelets
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


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_same_seed_gives_the_same_backbone_bytes(tmp_path: Path, amp: str) -> None:
    """Deterministic end to end (rendering, augmentation, order, init, CPU training), in fp32 and under the bf16
    autocast the default recipe uses on CPUs with native bf16: two cold runs agree."""
    config = PretrainConfig(**{**CONFIG.__dict__, "amp": amp})
    one = pretrain_demo(config, tmp_path / "one", progress=False)
    two = pretrain_demo(config, tmp_path / "two", progress=False)
    assert not one.cached and not two.cached
    assert one.backbone_sha256 == two.backbone_sha256 and one.path.read_bytes() == two.path.read_bytes()
    other = pretrain_demo(PretrainConfig(**{**config.__dict__, "seed": 1}), tmp_path / "three", progress=False)
    assert other.backbone_sha256 != one.backbone_sha256


def test_cache_key_covers_the_torch_thread_count() -> None:
    """A CPU run's floats depend on the thread count, so a 1-thread and a 2-thread file never share a key."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = pretrain_key(CONFIG)
        torch.set_num_threads(2)
        two = pretrain_key(CONFIG)
    finally:
        torch.set_num_threads(threads)
    assert one != two


def test_tubelets_are_in_the_patch_embedding_token_order() -> None:
    """Reference: torch's Conv3d with kernel = stride = tubelet is a linear map of each token's tubelet; the same
    weights applied to ``tubelets(x)`` give the same (B, N, C) tokens."""
    torch.manual_seed(0)
    patch = (2, 4, 4)
    conv = torch.nn.Conv3d(3, 5, kernel_size=patch, stride=patch, bias=False)
    x = torch.randn(2, 3, 4, 8, 12)
    ref = conv(x).flatten(2).transpose(1, 2)  # (B, N, C), t-major as in the ViT
    weight = conv.weight.permute(0, 2, 3, 4, 1).reshape(5, -1)  # (C, pt·ph·pw·3): the tubelet's layout
    torch.testing.assert_close(tubelets(x, patch) @ weight.T, ref, rtol=1e-5, atol=1e-5)


def test_reconstruction_loss_is_added_in_training_only() -> None:
    backbone = create_backbone("vpetl-demo", freeze=False, **TINY).requires_grad_(True)
    model = _Classifier(backbone, 3, reconstruction_weight=0.5)
    x = torch.randn(2, 3, 8, 64, 64)
    model.train()
    logits = model(x)
    loss = model.pop_auxiliary_loss()
    expected = 0.5 * F.mse_loss(model.decoder(backbone.forward_tokens(x)), tubelets(x, (2, 16, 16)))
    torch.testing.assert_close(loss, expected)
    assert logits.shape == (2, 3) and float(model.pop_auxiliary_loss()) == 0.0  # popped once
    model.eval()
    model(x)
    assert float(model.pop_auxiliary_loss()) == 0.0
    assert _Classifier(backbone, 3).decoder is None  # weight 0: the class loss alone


def test_the_autocast_is_part_of_the_cache_key() -> None:
    """A bf16-autocast pretraining writes other floats than an fp32 one: each gets its own cached file."""
    from training.pretrain import PretrainConfig, pretrain_key

    keys = {amp: pretrain_key(PretrainConfig(amp=amp, device="cpu")) for amp in ("none", "bf16")}
    assert keys["none"] != keys["bf16"]
    assert pretrain_key(PretrainConfig(amp="none", device="cpu")) == keys["none"]


def test_cli_refuses_an_unknown_amp(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from server.cli import app

    result = CliRunner().invoke(app, ["pretrain", "--out", str(tmp_path / "b.safetensors"), "--amp", "fp16",
                                      "--data-dir", str(tmp_path)])
    assert result.exit_code != 0 and "--amp must be auto, bf16 or none" in result.output
    assert not (tmp_path / "backbones").exists() or not any((tmp_path / "backbones").iterdir())
