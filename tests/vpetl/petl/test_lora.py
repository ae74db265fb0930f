"""LoRA beyond attention: target sets, pinned counts from PETL_SPEC's formula, and train-time-only dropout."""

from __future__ import annotations

import pytest
import torch

from vpetl.backbones import create_backbone
from vpetl.errors import IncompatibleAdapter, InvalidRequest
from vpetl.petl import create_model, make_config
from vpetl.petl.lora import LoraConfig

torch.set_num_threads(2)


def _count(backbone, **options) -> int:
    model = create_model(backbone, make_config("lora", **options), 10, share_backbone=True)
    try:
        return model.parameter_counts()["adapter"]
    finally:
        model.remove_adapters()


def test_counts_on_videomae_b_follow_the_formula() -> None:
    """r·(in + out) per target: 2rC for q/k/v/proj, r(C + 4C) for fc1 and fc2 (C = 768, 12 blocks)."""
    vb = create_backbone("videomae-b")
    assert _count(vb, rank=16) == 12 * 2 * (2 * 16 * 768) == 589_824  # the default q, v: unchanged
    assert _count(vb, rank=16, targets=("q", "k", "v")) == 884_736
    assert _count(vb, rank=8, targets=("fc1", "fc2")) == 12 * 2 * 8 * (768 + 3072) == 737_280
    every = ("q", "k", "v", "proj", "fc1", "fc2")
    assert _count(vb, rank=16, targets=every) == 12 * 16 * (4 * 2 * 768 + 2 * (768 + 3072)) == 2_654_208


def test_tensor_names_and_shapes() -> None:
    sd = create_model("videomae-tiny", make_config("lora", rank=3, targets=("proj", "fc1", "fc2")), 2)
    sd = sd.trainable_state_dict()
    assert sd["blocks.1.lora.fc1.A"].shape == (3, 64) and sd["blocks.1.lora.fc1.B"].shape == (256, 3)
    assert sd["blocks.1.lora.fc2.A"].shape == (3, 256) and sd["blocks.1.lora.fc2.B"].shape == (64, 3)
    assert sd["blocks.0.lora.proj.A"].shape == (3, 64) and "blocks.0.lora.q.A" not in sd


def test_targets_are_validated() -> None:
    with pytest.raises(InvalidRequest, match="subset"):
        make_config("lora", targets=("q", "qkv"))
    with pytest.raises(InvalidRequest, match="dropout"):
        make_config("lora", dropout=1.0)
    assert make_config("lora", targets="fc2,q").targets == ("q", "fc2")  # canonical order


def test_dropout_is_train_time_only() -> None:
    model = create_model("videomae-tiny", make_config("lora", rank=4, targets=("v", "fc1"), dropout=0.5), 3)
    with torch.no_grad():
        for name, p in model.trainable_state_dict().items():
            if name.endswith(".B"):
                p.normal_(0, 0.5)
    x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    no_drop = create_model("videomae-tiny", make_config("lora", rank=4, targets=("v", "fc1")), 3)
    no_drop.load_trainable_state_dict(model.trainable_state_dict())
    with torch.no_grad():
        model.train()
        torch.manual_seed(1)
        a = model(x)
        b = model(x)
        assert not torch.allclose(a, b)  # two dropout masks
        model.eval()
        no_drop.eval()
        assert torch.equal(model(x), model(x))
        assert torch.allclose(model(x), no_drop(x), atol=1e-6)  # eval: as if there were no dropout
        # Only the LoRA branch sees dropout: with B = 0 the train-mode model is the frozen one, exactly.
        for name, p in model.trainable_state_dict().items():
            if name.endswith(".B"):
                p.zero_()
        model.train()
        frozen = torch.nn.functional.linear(model.backbone(x), model.head.weight, model.head.bias)
        assert torch.allclose(model(x), frozen, atol=1e-6)


def test_config_written_before_dropout_existed_still_reads() -> None:
    old = {"method": "lora", "train_head": True, "rank": 4, "alpha": None, "targets": ["q", "v"]}
    cfg = LoraConfig.from_dict(old)
    assert cfg.dropout == 0.0 and cfg.targets == ("q", "v")
    with pytest.raises(IncompatibleAdapter, match="unknown key"):
        LoraConfig.from_dict({**old, "lora_dropout": 0.1}, error=IncompatibleAdapter)


def test_train_cli_options_reach_the_config() -> None:
    """``vpetl train --method lora --option targets=q,v,fc1 --option dropout=0.1`` (the README's line)."""
    from server.cli.train import method_options

    options = method_options("lora", 8, None, None, ["targets=q,v,fc1", "dropout=0.1"], False)
    cfg = make_config("lora", **options)
    assert cfg.targets == ("q", "v", "fc1") and cfg.dropout == 0.1 and cfg.rank == 8


def test_counts_on_swin_b_follow_the_formula() -> None:
    """Σ over Swin-B's 24 blocks (C = 128×2, 256×2, 512×18, 1024×2; ΣC = 12,032): 2rC per q/v target, 18rC for
    all six (q, k, v, proj: 2rC each; fc1, fc2: r(C + 4C) each)."""
    sb = create_backbone("swin3d-b")
    assert _count(sb, rank=16) == 4 * 16 * 12_032 == 770_048
    assert _count(sb, rank=16, targets=("q", "k", "v", "proj", "fc1", "fc2")) == 18 * 16 * 12_032 == 3_465_216
