"""Adapter files written before ``prefix`` became Table 3's scaffolded row and before BitFit trained Swin's
position tables still load and serve as they did: their configs lack the new keys, and read as the old methods."""

from __future__ import annotations

import pytest
import torch

from tests.vpetl.petl.test_bank import _clip, _perturbed_model
from vpetl.artifact import write_adapter
from vpetl.backbones import create_backbone
from vpetl.errors import IncompatibleAdapter
from vpetl.petl.bank import AdapterBank
from vpetl.petl.io import _to_numpy, adapter_meta
from vpetl.petl.registry import method_config_from_dict

LABELS = ["a", "b", "c"]


def _old_file(model, method_config: dict) -> bytes:
    """The file an older vpetl wrote for ``model``: same tensors, the old method name and config keys."""
    meta = adapter_meta(model, task="old", labels=LABELS)
    meta = meta.model_copy(update={"method": method_config["method"], "method_config": method_config})
    return write_adapter({k: _to_numpy(v) for k, v in model.trainable_state_dict().items()}, meta)


def test_old_config_dicts_read_as_the_old_methods() -> None:
    old_prefix = method_config_from_dict({"method": "prefix", "train_head": True, "num_tokens": 3, "bottleneck": 8})
    assert old_prefix.method == "prefix_plain" and old_prefix.to_dict()["bottleneck"] == 8
    assert method_config_from_dict({"method": "bitfit", "train_head": True}).to_dict() == {
        "method": "bitfit",
        "train_head": True,
        "position_tables": False,
    }
    base = {"method": "prefix", "train_head": True, "num_tokens": 3, "bottleneck": 8}
    new = method_config_from_dict({**base, "mlp_bottleneck": 4, "mlp_scale": 0.1, "mlp_mode": "parallel"})
    assert new.method == "prefix"
    with pytest.raises(IncompatibleAdapter, match="missing"):  # a partly new config is still refused
        method_config_from_dict({**base, "mlp_scale": 0.1}, error=IncompatibleAdapter)


@pytest.mark.parametrize(
    ("backbone", "method", "options", "old_config"),
    [
        ("videomae-tiny", "prefix_plain", {"num_tokens": 3, "bottleneck": 8},
         {"method": "prefix", "train_head": True, "num_tokens": 3, "bottleneck": 8}),
        ("swin3d-tiny", "bitfit", {"position_tables": False}, {"method": "bitfit", "train_head": True}),
    ],
)  # fmt: skip
def test_an_old_file_serves_as_its_model(backbone: str, method: str, options: dict, old_config: dict) -> None:
    model = _perturbed_model(backbone, method, options, num_classes=len(LABELS), seed=5)
    bank = AdapterBank(create_backbone(backbone))
    bank.load("old", 1, _old_file(model, old_config))
    clips = _clip(backbone, 2, seed=9)
    out = bank.forward(clips, [("old", 1), ("old", 1)])
    with torch.no_grad():
        want = model(clips)
    for i in range(2):
        assert torch.allclose(out[i], want[i], atol=1e-4), (out[i] - want[i]).abs().max()
