"""Merging LoRA / BitFit into the frozen weights: the merged plain model matches the adapter model, unmerge restores
the frozen weights bit-exactly, and methods that cannot fold are refused."""

from __future__ import annotations

import pytest
import torch

from vpetl.backbones import create_backbone
from vpetl.errors import UnsupportedMethod
from vpetl.petl import create_model, make_config
from vpetl.petl.merge import merge_adapter, merged_copy, merged_weights, unmerge

torch.set_num_threads(2)


def _perturbed(backbone_name: str, method: str, options: dict, seed: int = 0):
    model = create_model(backbone_name, make_config(method, **options), 5, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # B is zero at init: give every trained tensor real values so the merge matters
        for p in model.trainable_state_dict().values():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _clip(backbone_name: str) -> torch.Tensor:
    spec = create_backbone(backbone_name).input_spec
    return torch.randn(2, 3, 4, spec.size, spec.size, generator=torch.Generator().manual_seed(1))


CASES = [
    ("videomae-tiny", "lora", {"rank": 4, "targets": ("q", "k", "v", "proj", "fc1", "fc2"), "alpha": 8.0}),
    ("videomae-tiny", "lora", {"rank": 2}),
    ("vit-tiny", "lora", {"rank": 3, "targets": ("q", "v", "fc2")}),  # fused qkv rows
    ("swin3d-tiny", "lora", {"rank": 2, "targets": ("k", "proj", "fc1")}),
    ("videomae-tiny", "bitfit", {}),
    ("swin3d-tiny", "bitfit", {}),  # biases no hook reaches (patch merging norms) merge all the same
]


@pytest.mark.parametrize(("backbone_name", "method", "options"), CASES)
def test_merged_model_matches_adapter_model_and_unmerge_restores(backbone_name: str, method: str, options: dict):
    model = _perturbed(backbone_name, method, options)
    x = _clip(backbone_name)
    state = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    with torch.no_grad():
        want = model(x)
        # Reference for the merge: a frozen backbone of the same name, merged in place, then the head alone.
        frozen = create_backbone(backbone_name)
        before = {k: v.clone() for k, v in frozen.state_dict().items()}
        sha = frozen.sha256()
        handle = merge_adapter(frozen, model.config, state)
        assert handle.saved, "a merge changed nothing"
        got = torch.nn.functional.linear(frozen(x), state["head.weight"], state["head.bias"])
        assert (got - want).abs().max() <= 1e-5, (got - want).abs().max()
        unmerge(frozen, handle)
    after = frozen.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-exact
    assert frozen.sha256(refresh=True) == sha


def test_lora_merge_is_w_plus_scaled_ba_on_the_right_rows() -> None:
    """Pinned to PEFT's formula W + (α/r)·B·A, computed here by hand on the fused qkv weight's k rows."""
    model = _perturbed("vit-tiny", "lora", {"rank": 2, "targets": ("k",), "alpha": 6.0})
    state = model.trainable_state_dict()
    frozen = create_backbone("vit-tiny")
    new = merged_weights(frozen, model.config, state)
    w = frozen.get_parameter("blocks.1.attn.qkv.weight").detach()
    c = w.shape[1]
    a, b = state["blocks.1.lora.k.A"], state["blocks.1.lora.k.B"]
    expect = w.clone()
    expect[c : 2 * c] = w[c : 2 * c] + 3.0 * (b @ a)  # α/r = 6/2
    assert torch.allclose(new["blocks.1.attn.qkv.weight"], expect, atol=1e-7)
    assert torch.equal(new["blocks.1.attn.qkv.weight"][:c], w[:c])  # q and v rows untouched


def test_merged_copy_leaves_the_original_and_hashes_the_merge() -> None:
    model = _perturbed("videomae-tiny", "lora", {"rank": 2, "targets": ("fc1",)})
    frozen = create_backbone("videomae-tiny")
    sha = frozen.sha256()
    merged = merged_copy(frozen, model.config, model.trainable_state_dict())
    assert merged.sha256() != sha and frozen.sha256(refresh=True) == sha
    assert not any(len(b.adapters) for b in merged.adaptable_blocks())


@pytest.mark.parametrize("method", ["bapat", "patt", "adaptmlp", "prefix"])
def test_nonlinear_methods_are_refused(method: str) -> None:
    model = create_model("videomae-tiny", method, 3)
    frozen = create_backbone("videomae-tiny")
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    with pytest.raises(UnsupportedMethod, match="cannot be merged"):
        merge_adapter(frozen, model.config, model.trainable_state_dict())
    assert all(torch.equal(before[k], v) for k, v in frozen.state_dict().items())
