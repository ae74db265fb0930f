"""vpetl LoRA ↔ PEFT LoRA, tested with the real ``peft`` and ``transformers``: a vpetl adapter exported to PEFT gives
vpetl's logits in ``PeftModel``; a LoRA trained with ``peft`` on HF VideoMAE imports and gives PEFT's logits in
vpetl; what cannot be converted is refused by name and nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vpetl.artifact import read_adapter_meta
from vpetl.backbones import create_backbone
from vpetl.errors import InvalidRequest, UnsupportedConversion
from vpetl.formats.hf import export_hf
from vpetl.formats.peft import export_peft, peft_to_vpetl
from vpetl.petl import create_model, make_config
from vpetl.petl.io import adapter_bytes, load_adapter

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
torch.set_num_threads(2)
K = 4
EVERY = ("q", "k", "v", "proj", "fc1", "fc2")


def _clip(n: int = 2, seed: int = 3) -> torch.Tensor:
    spec = create_backbone("videomae-tiny").input_spec
    return torch.randn(n, 3, spec.num_frames, spec.size, spec.size, generator=torch.Generator().manual_seed(seed))


def _hf_logits(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=x.permute(0, 2, 1, 3, 4)).logits  # HF takes (B, T, C, H, W)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hf")
    export_hf(create_backbone("videomae-tiny"), out)
    return out


def _perturbed_lora(targets: tuple[str, ...], rank: int = 3, alpha: float = 6.0):
    model = create_model("videomae-tiny", make_config("lora", rank=rank, alpha=alpha, targets=targets), K, seed=1)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in model.trainable_state_dict().items():
            p.copy_((0.3 if name.startswith("blocks.") else 0.2) * torch.randn(p.shape, generator=gen))
    return model.eval()


@pytest.mark.parametrize("targets", [("q", "v"), EVERY, ("proj", "fc2")])  # proj vs fc2: both "…output.dense"
def test_export_loads_in_peft_with_vpetl_logits(hf_dir: Path, tmp_path: Path, targets: tuple[str, ...]) -> None:
    model = _perturbed_lora(targets)
    data = adapter_bytes(model, task="cats", labels=list("abcd"))
    info = export_peft(data, tmp_path / "peft")
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 3 and cfg["lora_alpha"] == 6.0
    assert cfg["modules_to_save"] == ["classifier"] and info["modules"] == 2 * len(targets)
    base = transformers.VideoMAEForVideoClassification.from_pretrained(hf_dir, num_labels=K)
    peft_model = peft.PeftModel.from_pretrained(base, tmp_path / "peft").eval()
    x = _clip()
    theirs = _hf_logits(peft_model, x)
    with torch.no_grad():
        ours = model(x)
    assert (theirs - ours).abs().max() <= 1e-4, (theirs - ours).abs().max()
    # PEFT's own merge agrees too (the same W + (α/r)·B·A as vpetl.petl.merge)
    merged = _hf_logits(peft_model.merge_and_unload(), x)
    assert (merged - ours).abs().max() <= 1e-4


@pytest.mark.parametrize("method", ["bapat", "patt", "adaptmlp", "bitfit"])
def test_export_of_other_methods_is_refused(tmp_path: Path, method: str) -> None:
    data = adapter_bytes(create_model("videomae-tiny", method, K), task="cats", labels=list("abcd"))
    with pytest.raises(UnsupportedConversion, match="stays in vpetl's own format"):
        export_peft(data, tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


def test_export_of_a_swin_lora_is_refused(tmp_path: Path) -> None:
    data = adapter_bytes(create_model("swin3d-tiny", "lora", K), task="cats", labels=list("abcd"))
    with pytest.raises(UnsupportedConversion, match="VideoMAE"):
        export_peft(data, tmp_path / "peft")


def train_with_peft(hf_dir: Path, out: Path, *, target_modules, steps: int = 3, **lora_kwargs) -> object:
    """A few AdamW steps of a PEFT LoRA on HF VideoMAE (classifier in modules_to_save), saved to ``out``."""
    torch.manual_seed(0)
    base = transformers.VideoMAEForVideoClassification.from_pretrained(hf_dir, num_labels=K)
    cfg = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=target_modules,
        modules_to_save=["classifier"],
        init_lora_weights="gaussian",
        **lora_kwargs,
    )  # gaussian: B is still 0, A is N(0, 1/r)
    model = peft.get_peft_model(base, cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    x, y = _clip(4, seed=9), torch.tensor([0, 1, 2, 3])
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(pixel_values=x.permute(0, 2, 1, 3, 4)).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(out)
    return model.eval()


@pytest.mark.parametrize(
    ("target_modules", "extra", "targets"),
    [
        (["query", "value"], {}, ("q", "v")),
        # PEFT's suffix rule: "output.dense" catches proj (attention.output.dense) and fc2 alike
        (["key", "output.dense", "intermediate.dense"], {"lora_dropout": 0.1}, ("k", "proj", "fc1", "fc2")),
        (["query"], {"layers_to_transform": [1]}, ("q",)),  # layer 0 untouched: zero A/B there
    ],
)
def test_lora_trained_with_peft_imports_with_the_same_logits(
    hf_dir: Path, tmp_path: Path, target_modules, extra, targets
) -> None:
    trained = train_with_peft(hf_dir, tmp_path / "peft", target_modules=target_modules, **extra)
    backbone = create_backbone("videomae-tiny")
    data = peft_to_vpetl(tmp_path / "peft", backbone, task="imported", labels=list("wxyz"))
    model = load_adapter(data, backbone)
    assert model.config.targets == targets and model.config.rank == 4 and model.config.scaling == 2.0
    assert model.config.dropout == extra.get("lora_dropout", 0.0)
    x = _clip(seed=11)
    with torch.no_grad():
        ours = model.eval()(x)
    theirs = _hf_logits(trained, x)
    assert (theirs - ours).abs().max() <= 1e-4, (theirs - ours).abs().max()
    assert (
        ours - _hf_logits(transformers.VideoMAEForVideoClassification.from_pretrained(hf_dir, num_labels=K), x)
    ).abs().max() > 1e-2  # the LoRA and head matter: not a comparison of base models


def test_round_trip_vpetl_peft_vpetl_keeps_every_tensor(tmp_path: Path) -> None:
    model = _perturbed_lora(EVERY)
    export_peft(adapter_bytes(model, task="cats", labels=list("abcd")), tmp_path / "peft")
    backbone = create_backbone("videomae-tiny")
    data = peft_to_vpetl(tmp_path / "peft", backbone, task="cats")
    assert read_adapter_meta(data).labels == list("abcd")  # from vpetl_source.json
    back = load_adapter(data, backbone)
    theirs, ours = back.trainable_state_dict(), model.trainable_state_dict()
    assert set(theirs) == set(ours) and all(torch.equal(theirs[k], ours[k]) for k in ours)


def _edit_config(directory: Path, **changes) -> None:
    path = directory / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"use_rslora": True}, "rsLoRA"),
        ({"rank_pattern": {"query": 8}}, "per-module ranks"),
        ({"bias": "all"}, "biases"),
        ({"modules_to_save": ["classifier", "fc_norm"]}, "fc_norm"),
        ({"peft_type": "IA3"}, "only PEFT LoRA"),
    ],
)
def test_import_refuses_what_vpetl_lora_cannot_hold(tmp_path: Path, changes: dict, match: str) -> None:
    export_peft(adapter_bytes(_perturbed_lora(("q", "v")), task="cats", labels=list("abcd")), tmp_path / "p")
    _edit_config(tmp_path / "p", **changes)
    with pytest.raises(UnsupportedConversion, match=match):
        peft_to_vpetl(tmp_path / "p", create_backbone("videomae-tiny"), task="cats")


def test_import_refuses_a_peft_adapter_without_its_classifier(hf_dir: Path, tmp_path: Path) -> None:
    base = transformers.VideoMAEForVideoClassification.from_pretrained(hf_dir, num_labels=K)
    peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["query"])).save_pretrained(tmp_path / "p")
    with pytest.raises(UnsupportedConversion, match="modules_to_save"):
        peft_to_vpetl(tmp_path / "p", create_backbone("videomae-tiny"), task="cats")


def test_import_refuses_a_bad_task_name_and_a_non_videomae_backbone(tmp_path: Path) -> None:
    export_peft(adapter_bytes(_perturbed_lora(("q",)), task="cats", labels=list("abcd")), tmp_path / "p")
    with pytest.raises(InvalidRequest, match="task name"):
        peft_to_vpetl(tmp_path / "p", create_backbone("videomae-tiny"), task="../etc")
    with pytest.raises(UnsupportedConversion, match="VideoMAE"):
        peft_to_vpetl(tmp_path / "p", create_backbone("swin3d-tiny"), task="cats")
