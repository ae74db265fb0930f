"""The mixed-task engine's contract: every clip of a mixed batch gets the logits it gets alone with its adapter."""

from __future__ import annotations

import pytest
import torch

from vpetl.backbones import create_backbone
from vpetl.errors import IncompatibleAdapter, InvalidAdapter, UnknownTask
from vpetl.petl import create_model
from vpetl.petl.bank import AdapterBank
from vpetl.petl.io import adapter_bytes
from vpetl.petl.registry import make_config

torch.set_num_threads(2)

# (method, options) per backbone family; every mix below is run in one batch.
VIDEO_MIX = [
    ("bapat", {"bottleneck": 8}),
    ("patt", {"bottleneck": 16, "positions": ("q", "k", "v"), "scale": 0.5}),
    ("patt", {"bottleneck": 4, "positions": ("q",)}),
    ("adaptmlp", {"bottleneck": 12, "mode": "sequential"}),
    ("adaptmlp", {"bottleneck": 6}),
    ("lora", {"rank": 4, "targets": ("q", "v")}),
    ("lora", {"rank": 2, "targets": ("k",), "alpha": 4.0}),
    # LoRA beyond attention: MLP-only, every op, and one op only, with ranks that differ (padded in gather mode)
    ("lora", {"rank": 3, "targets": ("proj", "fc1", "fc2"), "dropout": 0.1}),
    ("lora", {"rank": 5, "targets": ("q", "k", "v", "proj", "fc1", "fc2"), "alpha": 2.0}),
    ("lora", {"rank": 2, "targets": ("fc2",)}),
    ("bitfit", {}),
    ("linear", {}),
    ("prefix", {"num_tokens": 3, "bottleneck": 8}),
    ("vpt", {"num_tokens": 2}),
]
SWIN_MIX = [m for m in VIDEO_MIX if m[0] not in ("vpt",)]
VIT_MIX = [
    ("st_adapter", {"bottleneck": 8}),
    ("bapat", {"bottleneck": 8}),
    ("lora", {"rank": 4}),
    ("lora", {"rank": 3, "targets": ("v", "fc1")}),
    ("linear", {}),
    ("bitfit", {}),
    # DualPath samples its own frames from the 4-frame clip: the temporal path all 4 (one 2×2 frameset), the spatial
    # path frames 0 and 2; one task with the SSv2 configuration's fifth (temporal, before attention) adapter.
    ("dualpath", {"bottleneck": 8, "grid": 2, "spatial_frames": 2}),
    ("dualpath", {"bottleneck": 8, "grid": 2, "spatial_frames": 4, "temporal_pre_attn": True}),
    ("vpt", {"num_tokens": 2}),
]


def _perturbed_model(backbone_name: str, method: str, options: dict, num_classes: int, seed: int):
    model = create_model(backbone_name, make_config(method, **options), num_classes, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # zero-init ups would make adapters no-ops: give every trainable tensor real values
        for name, p in model.trainable_state_dict().items():
            if name.startswith("backbone."):
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _clip(backbone_name: str, n: int, seed: int) -> torch.Tensor:
    spec = create_backbone(backbone_name).input_spec
    frames = 4 if backbone_name != "vit-tiny" else 4
    return torch.randn(n, 3, frames, spec.size, spec.size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("backbone_name", "mix"),
    [("videomae-tiny", VIDEO_MIX), ("swin3d-tiny", SWIN_MIX), ("vit-tiny", VIT_MIX)],
)
@pytest.mark.parametrize("strategy", ["segment", "gather"])
def test_mixed_batch_matches_each_clip_alone(backbone_name: str, mix: list, strategy: str) -> None:
    bank = AdapterBank(create_backbone(backbone_name), strategy=strategy)
    models = {}
    for t, (method, options) in enumerate(mix):
        task = f"task{t}"
        models[task] = _perturbed_model(backbone_name, method, options, num_classes=3 + t, seed=t)
        data = adapter_bytes(models[task], task=task, labels=[f"c{i}" for i in range(3 + t)])
        bank.load(task, 1, data)
    tasks = list(models)
    keys = [(tasks[i % len(tasks)], 1) for i in range(len(tasks) + 3)][::-1]  # shuffled, some tasks twice
    clips = _clip(backbone_name, len(keys), seed=7)
    out = bank.forward(clips, keys)
    for i, (task, _) in enumerate(keys):
        with torch.no_grad():
            alone = models[task](clips[i : i + 1])[0]
        assert out[i].shape == alone.shape
        assert torch.allclose(out[i], alone, atol=1e-4), (task, (out[i] - alone).abs().max())
        assert out[i].argmax() == alone.argmax()


def test_unknown_task_fails_only_its_clip() -> None:
    bank = AdapterBank(create_backbone("videomae-tiny"))
    model = _perturbed_model("videomae-tiny", "bapat", {"bottleneck": 8}, 4, seed=1)
    bank.load("known", 1, adapter_bytes(model, task="known", labels=list("abcd")))
    clips = _clip("videomae-tiny", 3, seed=1)
    out = bank.forward(clips, [("known", 1), ("missing", 1), ("known", 1)])
    assert isinstance(out[1], UnknownTask)
    with torch.no_grad():
        assert torch.allclose(out[0], model(clips[:1])[0], atol=1e-4)
        assert torch.allclose(out[2], model(clips[2:])[0], atol=1e-4)


def test_incompatible_adapters_are_refused_and_cache_unchanged() -> None:
    bank = AdapterBank(create_backbone("videomae-tiny"))
    other = _perturbed_model("swin3d-tiny", "bapat", {"bottleneck": 8}, 4, seed=1)
    with pytest.raises(IncompatibleAdapter):
        bank.load("t", 1, adapter_bytes(other, task="t", labels=list("abcd")))
    reseeded = create_model(create_backbone("videomae-tiny", seed=5), "lora", 4)
    with pytest.raises(IncompatibleAdapter):
        bank.load("t", 1, adapter_bytes(reseeded, task="t", labels=list("abcd")))
    with pytest.raises(InvalidAdapter):
        bank.load("t", 1, b"\x80\x04not an adapter")
    assert len(bank.cache) == 0 and bank.cache.resident_bytes == 0


def test_cache_budget_holds_for_a_thousand_adapters() -> None:
    bank_backbone = create_backbone("videomae-tiny")
    model = _perturbed_model("videomae-tiny", "lora", {"rank": 2}, 2, seed=3)
    data = adapter_bytes(model, task="t", labels=["a", "b"])
    size = bank_backbone and AdapterBank(create_backbone("videomae-tiny")).load("probe", 1, data).nbytes
    bank = AdapterBank(bank_backbone, budget_bytes=10 * size)
    clips = _clip("videomae-tiny", 2, seed=2)
    for i in range(1000):
        bank.load(f"t{i}", 1, data)
        assert bank.cache.resident_bytes <= 10 * size
        if i % 250 == 0:
            out = bank.forward(clips, [(f"t{i}", 1), (f"t{i}", 1)])
            assert all(isinstance(o, torch.Tensor) for o in out)
    assert len(bank.cache) == 10
    assert bank.cache.stats.evictions == 990


def test_pinned_adapters_are_never_evicted() -> None:
    model = _perturbed_model("videomae-tiny", "lora", {"rank": 2}, 2, seed=3)
    data = adapter_bytes(model, task="t", labels=["a", "b"])
    bank = AdapterBank(create_backbone("videomae-tiny"))
    size = bank.load("a", 1, data).nbytes
    bank.cache.budget_bytes = 2 * size
    bank.load("b", 1, data)
    bank.cache.pin([("a", 1), ("b", 1)])
    from vpetl.errors import Overloaded

    with pytest.raises(Overloaded):
        bank.load("c", 1, data)
    bank.cache.unpin([("a", 1)])
    bank.load("c", 1, data)
    assert ("b", 1) in bank.cache and ("a", 1) not in bank.cache
