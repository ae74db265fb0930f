"""DualPath as its appendix (Table A1) describes it, on its default backbone: each path samples its own frames from
the clip the server decodes, the mixed-task engine serves it beside ST-Adapter, and an adapter that needs more
frames than the deployment decodes is refused at upload."""

from __future__ import annotations

import pytest
import torch

from vpetl.backbones import create_backbone
from vpetl.errors import IncompatibleAdapter
from vpetl.petl import create_model, get_method, make_config
from vpetl.petl.bank import AdapterBank
from vpetl.petl.dualpath import make_framesets, segment_frames
from vpetl.petl.io import adapter_bytes
from vpetl.protocol import InputSpec

torch.set_num_threads(2)


def _perturbed(backbone, method: str, options: dict, k: int, seed: int):
    model = create_model(backbone, make_config(method, **options), k, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # zero-init ups make the adapters no-ops: give every tensor real values
        for p in model.trainable_state_dict().values():
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()


def test_default_backbone_and_frames() -> None:
    assert get_method("dualpath").default_backbone == get_method("st_adapter").default_backbone == "clip-vit-b16"
    spec = create_backbone("clip-vit-tiny").input_spec
    cfg = make_config("dualpath")
    assert (spec.num_frames, cfg.clip_frames, cfg.temporal_frames, cfg.spatial_frames) == (16, 16, 16, 8)


def test_each_path_takes_its_own_frames() -> None:
    """A 16-frame clip (Table A1: rate 8 for T_G = 1): the temporal path uses every frame once, the spatial path
    every other one (rate 16 for T_S = 8); T_G = 2 takes 32 frames from a 32-frame clip."""
    x = torch.arange(16.0).reshape(1, 1, 16, 1, 1).expand(1, 3, 16, 8, 8)
    assert segment_frames(x, 8, "spatial path")[0, 0, :, 0, 0].tolist() == [0, 2, 4, 6, 8, 10, 12, 14]
    sets = make_framesets(x, grid=4, num_framesets=1)  # (1, 3, 1, 8, 8): 2×2-pixel tiles of frames 0…15
    tiles = sets[0, 0, 0].reshape(4, 2, 4, 2)[:, 0, :, 0]  # one pixel per tile, (row, col)
    assert tiles.flatten().tolist() == [float(i) for i in range(16)]
    long = torch.arange(32.0).reshape(1, 1, 32, 1, 1).expand(1, 3, 32, 8, 8)
    two = make_framesets(long, grid=4, num_framesets=2)
    assert two[0, 0, 1].reshape(4, 2, 4, 2)[:, 0, :, 0].flatten().tolist() == [float(i) for i in range(16, 32)]


def test_bank_serves_dualpath_beside_st_adapter_on_its_default_backbone() -> None:
    bank_bb = create_backbone("clip-vit-tiny")
    bank = AdapterBank(bank_bb)
    mix = [
        ("dualpath", {"bottleneck": 8}),
        ("dualpath", {"bottleneck": 8, "temporal_pre_attn": True, "combine": "sum"}),
        ("st_adapter", {"bottleneck": 8}),
        ("lora", {"rank": 2}),
    ]
    models = {}
    for t, (method, options) in enumerate(mix):
        models[f"t{t}"] = _perturbed("clip-vit-tiny", method, options, 3 + t, seed=t)
        labels = [f"c{i}" for i in range(3 + t)]
        bank.load(f"t{t}", 1, adapter_bytes(models[f"t{t}"], task=f"t{t}", labels=labels))
    keys = [("t0", 1), ("t2", 1), ("t1", 1), ("t3", 1), ("t0", 1)]
    clips = torch.randn(len(keys), 3, 16, 32, 32, generator=torch.Generator().manual_seed(5))
    out = bank.forward(clips, keys)
    for i, (task, _) in enumerate(keys):
        with torch.no_grad():
            alone = models[task](clips[i : i + 1])[0]
        assert torch.allclose(out[i], alone, atol=1e-4), (task, (out[i] - alone).abs().max())


def test_bank_refuses_an_adapter_needing_more_frames_than_it_decodes() -> None:
    """Trained where clips carry 32 frames (T_G = 2), uploaded where they carry 16: the same weights (same sha256),
    but the server could never give it its frames."""
    spec32 = InputSpec(num_frames=32, sampling="uniform", size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    trained_on = create_backbone("clip-vit-tiny", input_spec=spec32)
    model = _perturbed(trained_on, "dualpath", {"bottleneck": 8, "num_framesets": 2}, 3, seed=1)
    data = adapter_bytes(model, task="long", labels=["a", "b", "c"])
    bank = AdapterBank(create_backbone("clip-vit-tiny"))
    assert bank.backbone.sha256() == trained_on.sha256()
    with pytest.raises(IncompatibleAdapter, match=r"needs clips of 32 frames .*16-frame clips.*--frames 32"):
        bank.load("long", 1, data)
    assert len(bank.cache) == 0


def test_the_frame_check_holds_after_the_same_weights_loaded_it_with_more_frames() -> None:
    """One process, two backbones with the same weights (same sha256) but 32- and 16-frame clips: the adapter
    loads on the first, and the shape cache filled there must not let it past the second's frame check."""
    spec32 = InputSpec(num_frames=32, sampling="uniform", size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    long_bank = AdapterBank(create_backbone("clip-vit-tiny", input_spec=spec32))
    model = _perturbed(create_backbone("clip-vit-tiny", input_spec=spec32), "dualpath",
                       {"bottleneck": 8, "num_framesets": 2}, 3, seed=2)  # fmt: skip
    data = adapter_bytes(model, task="long2", labels=["a", "b", "c"])
    long_bank.load("long2", 1, data)
    short_bank = AdapterBank(create_backbone("clip-vit-tiny"))
    assert short_bank.backbone.sha256() == long_bank.backbone.sha256()
    with pytest.raises(IncompatibleAdapter, match=r"needs clips of 32 frames"):
        short_bank.load("long2", 1, data)
