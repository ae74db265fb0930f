"""Adapter files for torch models: save → load → apply reproduces logits exactly; mismatches are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vpetl.artifact import adapter_sha256, read_adapter, write_adapter
from vpetl.backbones import create_backbone
from vpetl.errors import IncompatibleAdapter, InvalidAdapter
from vpetl.petl import create_model, make_config
from vpetl.petl.io import adapter_bytes, apply_adapter, load_adapter, save_adapter
from vpetl.petl.model import PetlModel

LABELS = ["wave", "clap", "point"]
CONFIGS = {
    "bapat": make_config("bapat", bottleneck=8, mlp_bottleneck=4),
    "lora": make_config("lora", rank=4),
}


def trained(backbone: str, method: str, *, seed: int = 1, **options: object) -> PetlModel:
    """A model whose adapter and head are moved away from their init (LoRA B and AdaptMLP up start at zero)."""
    config = CONFIGS[method].with_options(**options) if method in CONFIGS else make_config(method, **options)
    model = create_model(backbone, config, len(LABELS), seed=seed)
    model.backbone.sha256()  # cache the pre-training hash (matters for methods that train backbone weights)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def clip(model: PetlModel, batch: int = 2) -> torch.Tensor:
    spec = model.backbone.input_spec
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, spec.num_frames, spec.size, spec.size, generator=gen)


@torch.no_grad()
def logits(model: PetlModel, x: torch.Tensor) -> torch.Tensor:
    return model.eval()(x)


@pytest.mark.parametrize(
    ("backbone", "method"),
    [("videomae-tiny", "bapat"), ("videomae-tiny", "lora"), ("swin3d-tiny", "bapat"), ("swin3d-tiny", "lora")],
)
def test_save_load_apply_reproduces_logits(tmp_path: Path, backbone: str, method: str) -> None:
    model = trained(backbone, method)
    x = clip(model)
    want = logits(model, x)
    path = tmp_path / "adapter.safetensors"
    stamp = "2025-01-31T12:00:00Z"
    sha = save_adapter(model, path, task="gestures", labels=LABELS, metrics={"val_top1": 0.5}, created_at=stamp)
    assert sha == adapter_sha256(path.read_bytes())

    meta = read_adapter(path).meta
    assert meta.method == method and meta.method_config == model.config.to_dict()
    assert meta.backbone == backbone and meta.backbone_sha256 == model.backbone.sha256()
    assert meta.trainable_params == model.parameter_counts()["trainable"]
    assert meta.input_spec == model.backbone.input_spec and meta.labels == LABELS and "servable" not in meta.extra

    loaded = load_adapter(path)  # backbone rebuilt from the name in the file
    assert torch.equal(logits(loaded, x), want)
    fresh = create_model(backbone, model.config, len(LABELS), seed=7)  # other init, same method
    assert not torch.equal(logits(fresh, x), want)
    file = apply_adapter(fresh, path.read_bytes())
    assert file.sha256 == sha
    assert torch.equal(logits(fresh, x), want)
    # Same model, same inputs, same bytes: the identity is reproducible.
    again = adapter_bytes(model, task="gestures", labels=LABELS, metrics={"val_top1": 0.5}, created_at=stamp)
    assert again == path.read_bytes()


def test_load_onto_given_backbone_and_float16(tmp_path: Path) -> None:
    model = trained("videomae-tiny", "lora")
    x = clip(model)
    backbone = create_backbone("videomae-tiny")
    data = adapter_bytes(model, task="t", labels=LABELS)
    assert torch.equal(logits(load_adapter(data, backbone), x), logits(model, x))
    assert not backbone.adaptable_blocks()[0].adapters  # a private copy was adapted

    half = adapter_bytes(model, task="t", labels=LABELS, dtype="float16")
    assert len(half) < len(data)
    torch.testing.assert_close(logits(load_adapter(half, "videomae-tiny"), x), logits(model, x), atol=1e-2, rtol=1e-2)


def test_bitfit_round_trip_with_cached_backbone_hash() -> None:
    model = trained("videomae-tiny", "bitfit")
    x = clip(model)
    data = adapter_bytes(model, task="t", labels=LABELS)
    assert read_adapter(data).meta.backbone_sha256 == create_backbone("videomae-tiny").sha256()
    assert torch.equal(logits(load_adapter(data), x), logits(model, x))


def test_full_finetune_is_saved_but_marked_not_servable() -> None:
    model = trained("videomae-tiny", "full")
    x = clip(model)
    data = adapter_bytes(model, task="t", labels=LABELS, extra={"note": "whole model"})
    meta = read_adapter(data).meta
    assert meta.extra == {"note": "whole model", "servable": False}
    assert torch.equal(logits(load_adapter(data), x), logits(model, x))


def test_backbone_hash_mismatch_is_refused() -> None:
    model = trained("videomae-tiny", "bapat")
    data = adapter_bytes(model, task="t", labels=LABELS)
    other = create_backbone("videomae-tiny", seed=1)  # same architecture, other weights
    with pytest.raises(IncompatibleAdapter) as info:
        load_adapter(data, other)
    msg = info.value.message
    assert model.backbone.sha256()[:12] in msg and other.sha256()[:12] in msg and "videomae-tiny" in msg
    with pytest.raises(IncompatibleAdapter, match="sha256"):
        apply_adapter(create_model(other, CONFIGS["bapat"], len(LABELS)), data)
    # Knowingly loading onto other weights is possible.
    assert isinstance(load_adapter(data, other, check_backbone=False), PetlModel)

    with pytest.raises(IncompatibleAdapter, match="swin3d-tiny"):
        load_adapter(data, "swin3d-tiny")  # another architecture: the hash check names both backbones


def test_wrong_method_or_settings_are_refused() -> None:
    bapat = trained("videomae-tiny", "bapat")
    data = adapter_bytes(bapat, task="t", labels=LABELS)
    with pytest.raises(IncompatibleAdapter, match="'bapat' adapter; the model uses 'lora'"):
        apply_adapter(create_model("videomae-tiny", CONFIGS["lora"], len(LABELS)), data)
    wider = create_model("videomae-tiny", CONFIGS["bapat"].with_options(bottleneck=16), len(LABELS))
    with pytest.raises(IncompatibleAdapter, match="bottleneck: file 8 vs model 16"):
        apply_adapter(wider, data)
    with pytest.raises(IncompatibleAdapter, match="has 3 classes; the model has 4"):
        apply_adapter(create_model("videomae-tiny", CONFIGS["bapat"], 4), data)

    # A file whose tensors do not match the config it claims: refused by shape before anything is copied.
    meta = read_adapter(data).meta.model_copy(update={"method_config": wider.config.to_dict()})
    forged = write_adapter(read_adapter(data).tensors, meta)
    with pytest.raises(IncompatibleAdapter, match="wrong shape") as info:
        load_adapter(forged)
    assert "blocks.0.patt.down.weight (8, 64) (expected (16, 64))" in info.value.message


def test_unknown_method_in_file_is_incompatible() -> None:
    model = trained("videomae-tiny", "lora")
    file = read_adapter(adapter_bytes(model, task="t", labels=LABELS))
    meta = file.meta.model_copy(update={"method": "dora", "method_config": {"method": "dora", "rank": 4}})
    with pytest.raises(IncompatibleAdapter, match="dora"):
        load_adapter(write_adapter(file.tensors, meta))


def test_tampered_file_changes_identity_and_output() -> None:
    model = trained("videomae-tiny", "lora")
    x = clip(model)
    data = bytearray(adapter_bytes(model, task="t", labels=LABELS))
    sha = adapter_sha256(bytes(data))
    data[-2] ^= 0x40  # a byte inside the last tensor (sorted names: a LoRA weight of the last block)
    tampered = read_adapter(bytes(data))
    assert tampered.sha256 != sha
    assert not torch.equal(logits(load_adapter(tampered), x), logits(model, x))


def test_save_refuses_wrong_label_count(tmp_path: Path) -> None:
    model = trained("videomae-tiny", "lora")
    with pytest.raises(InvalidAdapter, match="2 labels given for a model with 3 classes"):
        save_adapter(model, tmp_path / "a.safetensors", task="t", labels=["a", "b"])
    assert not (tmp_path / "a.safetensors").exists()
