"""Masked-video pretraining (VideoMAE's objective): tube masks, the per-tubelet normalised target and the loss over
masked tubelets pinned to loop references, no leak from masked pixels through the conv stem, and the
``vpetl pretrain --objective mae`` recipe (deterministic, loss goes down, cached apart from the supervised one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from server.cli import app
from training.mae import MaeConfig, MaskedVideoAutoencoder, tube_mask, tubelet_targets
from training.pretrain import PretrainConfig, _splits, pretrain_demo, pretrain_key
from vpetl.backbones import create_backbone
from vpetl.data.synth import render_clip, write_mp4

TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2}  # keeps vpetl-demo's conv stem and 4×4×4 token grid
MAE = PretrainConfig(objective="mae", clips_per_class=4, frames=(16, 20), epochs=3, batch_size=8, lr=3e-3,
                     num_workers=1, backbone_overrides=TINY)


def _tubelet_reference(x: np.ndarray, patch: tuple[int, int, int], b: int, n: int,
                       grid: tuple[int, int, int]) -> np.ndarray:
    """Token n of clip b by loops: its (C, pt, ph, pw) block laid out (pt, ph, pw, C), normalised with ddof=1."""
    _, gh, gw = grid
    pt, ph, pw = patch
    t, rest = divmod(n, gh * gw)
    h, w = divmod(rest, gw)
    block = x[b, :, t * pt:(t + 1) * pt, h * ph:(h + 1) * ph, w * pw:(w + 1) * pw]  # (C, pt, ph, pw)
    flat = block.transpose(1, 2, 3, 0).reshape(-1).astype(np.float64)
    return (flat - flat.mean()) / np.sqrt(flat.var(ddof=1) + 1e-6)


def test_tube_mask_hides_the_same_positions_in_every_time_slice() -> None:
    hidden = tube_mask(5, (4, 4, 4), 0.75, torch.Generator().manual_seed(0))
    assert hidden.shape == (5, 64) and hidden.dtype == torch.bool
    slices = hidden.view(5, 4, 16)  # (B, T', H'W')
    assert (slices == slices[:, :1]).all()  # a tube: the same spatial positions at every time
    assert (slices[:, 0].sum(dim=1) == 12).all()  # round(0.75 · 16) hidden, 4 seen
    assert len({tuple(row.tolist()) for row in slices[:, 0]}) > 1  # drawn per clip
    assert tube_mask(2, (4, 4, 4), 0.999).view(2, 4, 16)[:, 0].sum(dim=1).tolist() == [15, 15]  # one stays seen


def test_targets_are_each_tubelet_normalised_over_its_own_pixels() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 8, 12) * 3 + 1
    out = tubelet_targets(x, (2, 4, 4))  # (B, N, P)
    assert out.shape == (2, 2 * 2 * 3, 2 * 4 * 4 * 3)
    for b in range(2):
        for n in range(out.shape[1]):
            np.testing.assert_allclose(out[b, n].numpy(), _tubelet_reference(x.numpy(), (2, 4, 4), b, n, (2, 2, 3)),
                                       rtol=1e-4, atol=1e-5)


def test_loss_is_the_mse_over_the_masked_tubelets_only() -> None:
    backbone = create_backbone("vpetl-demo", freeze=False, **TINY).requires_grad_(True)
    model = MaskedVideoAutoencoder(backbone, MaeConfig(mask_ratio=0.75))
    x = torch.randn(2, 3, 8, 64, 64)
    hidden = tube_mask(2, (4, 4, 4), 0.75, torch.Generator().manual_seed(1))
    captured: list[torch.Tensor] = []
    model.decoder_pred.register_forward_hook(lambda module, args, out: captured.append(out.detach()))
    loss = model(x, hidden)
    pred = captured[0].numpy()  # (B·N_masked, P), masked tokens in (clip, token) order
    positions = [(b, n) for b in range(2) for n in range(64) if hidden[b, n]]
    assert pred.shape == (len(positions), 2 * 16 * 16 * 3) and len(positions) == 2 * 48
    reference = np.stack([_tubelet_reference(x.numpy(), (2, 16, 16), b, n, (4, 4, 4)) for b, n in positions])
    np.testing.assert_allclose(loss.item(), np.mean((pred - reference) ** 2), rtol=1e-4)
    loss.backward()
    assert backbone.blocks[0].attn.q.weight.grad is not None  # the encoder is what trains


def test_masked_pixels_do_not_reach_the_visible_tokens_through_the_conv_stem() -> None:
    backbone = create_backbone("vpetl-demo", freeze=False, **TINY)
    model = MaskedVideoAutoencoder(backbone).eval()
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 64, 64)
    hidden = tube_mask(1, (4, 4, 4), 0.75, torch.Generator().manual_seed(2))
    pixel_hidden = hidden.view(1, 4, 4, 4).repeat_interleave(2, 1).repeat_interleave(16, 2).repeat_interleave(16, 3)
    changed = torch.where(pixel_hidden[:, None], torch.randn_like(x) * 5, x)  # new pixels in every masked tube
    with torch.no_grad():
        base = model.encode_visible(x, hidden)
        torch.testing.assert_close(model.encode_visible(changed, hidden), base)
        seen = x.clone()
        seen[pixel_hidden[:, None].expand_as(x).logical_not()] += 1.0  # the visible pixels do matter
        assert not torch.allclose(model.encode_visible(seen, hidden), base)
    assert base.shape == (1, 16, 32)  # 4 seen positions × 4 time slices


def test_mae_pretraining_lowers_the_loss_and_is_deterministic(tmp_path: Path) -> None:
    one = pretrain_demo(MAE, tmp_path / "one", progress=False)
    two = pretrain_demo(MAE, tmp_path / "two", progress=False)
    assert one.val_top1 is None and one.val_reconstruction_loss is not None
    assert one.val_reconstruction_loss < one.initial_val_reconstruction_loss
    assert one.path.read_bytes() == two.path.read_bytes()
    loaded = create_backbone("vpetl-demo", checkpoint=one.path, **TINY)  # the encoder alone, servable
    assert loaded.sha256() == one.backbone_sha256
    cached = pretrain_demo(MAE, tmp_path / "one", progress=False)
    assert cached.cached and cached.val_reconstruction_loss == one.val_reconstruction_loss


def test_cache_key_separates_the_objectives_and_keeps_the_supervised_one() -> None:
    supervised = PretrainConfig(backbone_overrides=TINY)
    assert "objective" not in supervised.key_dict()  # the supervised key is what it was before MAE existed
    assert pretrain_key(supervised) == pretrain_key(PretrainConfig(backbone_overrides=TINY, mask_ratio=0.5))
    mae = PretrainConfig(backbone_overrides=TINY, objective="mae")
    assert pretrain_key(mae) != pretrain_key(supervised)
    assert pretrain_key(mae) != pretrain_key(PretrainConfig(backbone_overrides=TINY, objective="mae", mask_ratio=0.5))


def test_unlabelled_clips_in_one_folder_get_a_held_out_twentieth(tmp_path: Path) -> None:
    folder = tmp_path / "mine" / "clips"
    folder.mkdir(parents=True)
    frames = render_clip("source", 0, 0, size=64, frames=(8, 8))
    for i in range(40):
        write_mp4(folder / f"c{i:02d}.mp4", frames)
    train, val = _splits(tmp_path / "mine", unlabelled=True)
    assert (len(train), len(val)) == (38, 2) and {p.path.name for p in val.items} == {"c19.mp4", "c39.mp4"}
    assert not {p.path for p in train.items} & {p.path for p in val.items}


def test_cli_refuses_an_unknown_objective(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["pretrain", "--out", str(tmp_path / "b.safetensors"), "--objective", "jigsaw",
                                      "--data-dir", str(tmp_path)])
    assert result.exit_code != 0 and "--objective must be 'supervised' or 'mae'" in result.output
    assert not (tmp_path / "backbones").exists() or not any((tmp_path / "backbones").iterdir())


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_a_mask_ratio_that_hides_nothing_or_everything_is_refused(tmp_path: Path, ratio: float) -> None:
    with pytest.raises(ValueError, match="mask_ratio"):
        pretrain_demo(PretrainConfig(objective="mae", mask_ratio=ratio, backbone_overrides=TINY), tmp_path)


def test_cli_pretrains_on_a_folder_of_unlabelled_clips(tmp_path: Path) -> None:
    """`vpetl pretrain --objective mae --data DIR` as a user with their own clips runs it (full-size demo ViT,
    a few clips, one epoch)."""
    import json

    folder = tmp_path / "mine" / "clips"
    folder.mkdir(parents=True)
    for i in range(20):
        write_mp4(folder / f"c{i:02d}.mp4", render_clip("source", i % 3, i, size=80, frames=(16, 20)))
    out = tmp_path / "mine.safetensors"
    result = CliRunner().invoke(app, ["pretrain", "--out", str(out), "--objective", "mae", "--data",
                                      str(tmp_path / "mine"), "--epochs", "1", "--data-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["val_top1"] is None and payload["val_reconstruction_loss"] > 0
    assert payload["config"]["objective"] == "mae" and out.is_file()
    assert create_backbone("vpetl-demo", checkpoint=out).sha256() == payload["backbone_sha256"]
