"""VideoMAE ↔ Hugging Face transformers: the exported directory loads in the real ``transformers`` and gives vpetl's
features; reading it back gives the same backbone (same sha256)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vpetl.backbones import create_backbone
from vpetl.errors import UnsupportedConversion
from vpetl.formats.hf import export_hf

transformers = pytest.importorskip("transformers")
torch.set_num_threads(2)


def _clip(backbone, n: int = 2) -> torch.Tensor:
    spec = backbone.input_spec
    return torch.randn(n, 3, spec.num_frames, spec.size, spec.size, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def backbone():
    bb = create_backbone("videomae-tiny", seed=11)  # seed: not the default weights, so nothing matches by luck
    with torch.no_grad():  # non-trivial norms and biases, so a swapped or dropped name shows
        gen = torch.Generator().manual_seed(5)
        for name, p in bb.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    bb.sha256(refresh=True)
    return bb


def test_export_loads_in_transformers_with_the_same_features(backbone, tmp_path: Path) -> None:
    summary = export_hf(backbone, tmp_path / "hf")
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors"]
    assert summary["backbone_sha256"] == backbone.sha256()
    hf = transformers.VideoMAEModel.from_pretrained(tmp_path / "hf").eval()
    x = _clip(backbone)
    with torch.no_grad():
        theirs = hf(pixel_values=x.permute(0, 2, 1, 3, 4)).last_hidden_state  # HF takes (B, T, C, H, W)
        ours = backbone.forward_tokens(x)
    assert theirs.shape == ours.shape
    assert (theirs - ours).abs().max() <= 1e-5, (theirs - ours).abs().max()


def test_export_with_head_gives_vpetl_logits_in_the_classification_model(backbone, tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(2)
    weight, bias = 0.125 * torch.randn(5, 64, generator=gen), 0.1 * torch.randn(5, generator=gen)  # Linear-init scale
    export_hf(backbone, tmp_path / "cls", head=(weight, bias), labels=list("abcde"))
    cfg = json.loads((tmp_path / "cls" / "config.json").read_text())
    assert cfg["id2label"]["4"] == "e" and cfg["model_type"] == "videomae"
    hf = transformers.VideoMAEForVideoClassification.from_pretrained(tmp_path / "cls").eval()
    x = _clip(backbone)
    with torch.no_grad():
        theirs = hf(pixel_values=x.permute(0, 2, 1, 3, 4)).logits
        ours = torch.nn.functional.linear(backbone(x), weight, bias)
    # HF's fc_norm has eps 1e-5 (hard-coded), vpetl's 1e-6: within the serving tolerance ...
    assert (theirs - ours).abs().max() <= 1e-4, (theirs - ours).abs().max()
    # ... and the only difference: with HF's eps set to vpetl's, the logits agree to float rounding.
    hf.fc_norm.eps = backbone.fc_norm.eps
    with torch.no_grad():
        aligned = hf(pixel_values=x.permute(0, 2, 1, 3, 4)).logits
    assert (aligned - ours).abs().max() <= 1e-5, (aligned - ours).abs().max()


def test_round_trip_through_hf_is_the_same_backbone(backbone, tmp_path: Path) -> None:
    export_hf(backbone, tmp_path / "hf")
    back = create_backbone("videomae-tiny", checkpoint=tmp_path / "hf" / "model.safetensors")
    assert back.sha256() == backbone.sha256()  # every weight bit-identical under the same name
    x = _clip(backbone)
    with torch.no_grad():
        assert (back(x) - backbone(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["swin3d-tiny", "vit-tiny", "vpetl-demo"])
def test_backbones_without_an_hf_counterpart_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedConversion, match="transformers"):
        export_hf(create_backbone(name), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def _task_adapter(method: str, options: dict) -> tuple[object, bytes]:
    from vpetl.petl import create_model, make_config
    from vpetl.petl.io import adapter_bytes

    model = create_model("videomae-tiny", make_config(method, **options), 3, seed=2)
    gen = torch.Generator().manual_seed(6)
    with torch.no_grad():  # LoRA's B starts at zero, BitFit's biases at the frozen ones: move them
        for name, p in model.trainable_state_dict().items():
            if not name.startswith("head."):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval(), adapter_bytes(model, task="cats", labels=["a", "b", "c"])


@pytest.mark.parametrize(
    ("method", "options"),
    [("lora", {"rank": 3, "targets": ("q", "k", "v", "proj", "fc1", "fc2"), "alpha": 6.0}), ("bitfit", {})],
)
def test_a_merged_task_exports_as_a_plain_transformers_classifier(tmp_path: Path, method: str, options: dict):
    from vpetl.formats.hf import export_hf_task

    model, data = _task_adapter(method, options)
    info = export_hf_task(create_backbone("videomae-tiny"), data, tmp_path / "task")
    assert info["method"] == method and info["task"] == "cats"
    hf = transformers.VideoMAEForVideoClassification.from_pretrained(tmp_path / "task").eval()
    assert hf.config.id2label == {0: "a", 1: "b", 2: "c"}
    x = _clip(create_backbone("videomae-tiny"))
    with torch.no_grad():
        theirs = hf(pixel_values=x.permute(0, 2, 1, 3, 4)).logits
        ours = model(x)
    assert (theirs - ours).abs().max() <= 1e-4, (theirs - ours).abs().max()


def test_a_task_that_cannot_merge_is_refused(tmp_path: Path) -> None:
    from vpetl.formats.hf import export_hf_task

    _, data = _task_adapter("bapat", {"bottleneck": 8})
    with pytest.raises(UnsupportedConversion, match="cannot be merged"):
        export_hf_task(create_backbone("videomae-tiny"), data, tmp_path / "task")
    assert not (tmp_path / "task").exists()
