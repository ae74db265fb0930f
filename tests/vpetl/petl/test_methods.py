"""Every (method × tiny backbone) pair: build, forward, backward, state round trip, counts by formula; refusals,
configs, registry, stable names, zero init."""

from __future__ import annotations

import re

import pytest
import torch

from vpetl.backbones import Backbone, create_backbone
from vpetl.errors import IncompatibleAdapter, InvalidInput, InvalidRequest, UnsupportedMethod
from vpetl.petl import (
    AdaptMlpConfig,
    BapatConfig,
    LoraConfig,
    PattConfig,
    PetlModel,
    create_model,
    get_method,
    list_methods,
    make_config,
    method_config_from_dict,
)
from vpetl.petl.dualpath import make_framesets

TINY = ("videomae-tiny", "swin3d-tiny", "clip-vit-tiny")
ALL_METHODS = (
    "adaptmlp",
    "bapat",
    "bitfit",
    "dualpath",
    "full",
    "linear",
    "lora",
    "patt",
    "prefix",
    "prefix_plain",
    "st_adapter",
    "vpt",
)
UNSUPPORTED = {
    ("vpt", "swin3d-tiny"),
    ("st_adapter", "videomae-tiny"),
    ("st_adapter", "swin3d-tiny"),
    ("dualpath", "videomae-tiny"),
    ("dualpath", "swin3d-tiny"),
}
PAIRS = [(m, b) for m in ALL_METHODS for b in TINY if (m, b) not in UNSUPPORTED]
K = 5
# Methods that leave the pooled features unchanged at init (zero-init adapters, or nothing attached).
IDENTITY_AT_INIT = ("adaptmlp", "lora", "st_adapter", "dualpath", "linear", "bitfit", "full")


@pytest.fixture(scope="module")
def backbones() -> dict[str, Backbone]:
    return {name: create_backbone(name) for name in TINY}


def _clip(backbone: Backbone, batch: int = 2, seed: int = 0) -> torch.Tensor:
    spec = backbone.input_spec
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, spec.num_frames, spec.size, spec.size, generator=g)


def _perturb(model: PetlModel, seed: int = 0) -> None:
    """Move every state tensor off its (possibly zero) init so every parameter gets a nonzero gradient."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.stable_named_parameters().values():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def _is_bias(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return leaf == "bias" or leaf.endswith("_bias")


def expected_adapter_count(method: str, cfg, backbone: Backbone) -> int:
    """PETL_SPEC's formulas, written independently of the implementation."""
    dims = [b.dim for b in backbone.adaptable_blocks()]
    own = {n: p.numel() for n, p in backbone.named_parameters() if ".adapters." not in n}
    if method == "patt":
        p, d = len(cfg.positions), cfg.bottleneck
        return sum((p + 1) * c * d + d + p * c for c in dims)
    if method == "adaptmlp":
        return sum(2 * c * cfg.bottleneck + cfg.bottleneck + c for c in dims)
    if method == "bapat":
        d, r = cfg.bottleneck, cfg.mlp_bottleneck
        return sum(3 * c * d + d + 2 * c + 2 * c * r + r + c for c in dims)
    if method == "lora":
        return sum(len(cfg.targets) * 2 * cfg.rank * c for c in dims)
    if method == "bitfit":  # biases, and Swin's relative-position tables with position_tables (the default)
        tables = cfg.position_tables
        return sum(v for n, v in own.items() if _is_bias(n) or (tables and n.endswith("relative_position_bias_table")))
    if method == "full":
        return sum(own.values())
    if method in ("prefix", "prefix_plain"):
        n, d = cfg.num_tokens, cfg.bottleneck
        plain = sum(n * c + c * d + d + 2 * c * d + 2 * c for c in dims)
        if method == "prefix_plain":
            return plain
        return plain + sum(2 * c * cfg.mlp_bottleneck + cfg.mlp_bottleneck + c for c in dims)  # + AdaptMLP
    if method == "vpt":
        return sum(cfg.num_tokens * c for c in dims) if cfg.deep else cfg.num_tokens * dims[0]
    if method == "st_adapter":
        ca = cfg.bottleneck
        return sum(len(cfg.positions) * (2 * c * ca + 5 * ca + c) for c in dims)
    if method == "dualpath":
        adapters = 5 if cfg.temporal_pre_attn else 4
        return sum(adapters * (2 * c * cfg.bottleneck + cfg.bottleneck + c) for c in dims)
    assert method == "linear"
    return 0


# ------------------------------------------------------------------------------------------------- the matrix
def test_unsupported_pairs_match_the_registry(backbones: dict[str, Backbone]) -> None:
    assert tuple(list_methods()) == ALL_METHODS
    refused = set()
    for m in ALL_METHODS:
        for b in TINY:
            try:
                get_method(m)(make_config(m)).check_backbone(backbones[b])
            except UnsupportedMethod:
                refused.add((m, b))
    assert refused == UNSUPPORTED


@pytest.mark.parametrize(("method", "backbone_name"), sorted(UNSUPPORTED))
def test_refused_with_a_clear_message(method: str, backbone_name: str, backbones: dict[str, Backbone]) -> None:
    with pytest.raises(UnsupportedMethod) as info:
        create_model(backbones[backbone_name], method, K)
    message = str(info.value)
    assert method in message and backbone_name in message and "instead" in message
    with pytest.raises(UnsupportedMethod):
        create_model(backbone_name, method, K)  # by name too


@pytest.mark.parametrize(("method", "backbone_name"), PAIRS)
def test_forward_backward_reaches_exactly_the_trainable(
    method: str, backbone_name: str, backbones: dict[str, Backbone]
) -> None:
    model = create_model(backbones[backbone_name], method, K)
    _perturb(model)
    x = _clip(model.backbone)
    logits = model(x)
    assert logits.shape == (2, K) and torch.isfinite(logits).all()
    (logits * torch.randn(logits.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable == {id(p) for p in model.parameters() if p.requires_grad}
    # With CLS pooling, patch tokens after the last block's attention never reach the feature: an ST-Adapter
    # before the last MLP touches only patch tokens, so it gets an exactly zero gradient (true of the original too).
    last = len(model.backbone.adaptable_blocks()) - 1
    dead_prefix = f"blocks.{last}.st_adapter.pre_mlp"
    dead = {id(p) for n, p in model.stable_named_parameters().items() if n.startswith(dead_prefix)}
    for name, p in model.named_parameters():
        if id(p) in dead:
            assert p.grad is not None, f"{name} is not in the graph"
        elif id(p) in trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {name}"
        else:
            assert p.grad is None, f"frozen {name} got a gradient"
    assert len(trainable) > 0


@pytest.mark.parametrize(("method", "backbone_name"), PAIRS)
def test_state_round_trip_gives_identical_logits(
    method: str, backbone_name: str, backbones: dict[str, Backbone]
) -> None:
    backbone = backbones[backbone_name]
    trained = create_model(backbone, method, K, seed=0)
    _perturb(trained)
    state = trained.trainable_state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == trained.expected_shapes()
    assert all(re.fullmatch(r"blocks\.\d+\.[a-z_]+\..+|backbone\..+|head\.(weight|bias)", k) for k in state)
    fresh = create_model(backbone, method, K, seed=1)
    assert fresh.load_trainable_state_dict(state) == {"missing": [], "unexpected": []}
    x = _clip(backbone)
    trained.eval()
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), trained(x), atol=0, rtol=0)


@pytest.mark.parametrize(("method", "backbone_name"), PAIRS)
def test_counts_equal_the_formula(method: str, backbone_name: str, backbones: dict[str, Backbone]) -> None:
    backbone = backbones[backbone_name]
    model = create_model(backbone, method, K)
    counts = model.parameter_counts()
    features = backbone.num_features * (2 if method == "dualpath" else 1)
    assert counts["adapter"] == expected_adapter_count(method, model.config, backbone)
    assert counts["head"] == features * K + K
    assert counts["trainable"] == counts["adapter"] + counts["head"] == counts["state"]
    assert counts["backbone"] == sum(p.numel() for p in backbone.parameters())
    assert counts["percent_of_backbone"] == pytest.approx(100 * counts["trainable"] / counts["backbone"])
    assert sum(counts["components"].values()) == counts["state"]


@pytest.mark.parametrize(("method", "backbone_name"), PAIRS)
def test_init_effect_on_features(method: str, backbone_name: str, backbones: dict[str, Backbone]) -> None:
    """Zero-init methods leave the pooled features unchanged at step 0; PATT, prefix and VPT do not."""
    backbone = backbones[backbone_name]
    model = create_model(backbone, method, K).eval()
    x = _clip(backbone)
    with torch.no_grad():
        adapted = model.features(x)
        plain = model.method.features(backbone, x)  # the same feature function, no adapters attached
    diff = (adapted - plain).abs().max().item()
    if method in IDENTITY_AT_INIT:
        assert diff <= 1e-6
    else:
        assert diff > 1e-4


@pytest.mark.parametrize("backbone_name", TINY)
def test_train_mode_and_frozen_head_option(backbone_name: str, backbones: dict[str, Backbone]) -> None:
    backbone = backbones[backbone_name]
    model = create_model(backbone, make_config("adaptmlp", train_head=False), K, seed=3)
    model.train()
    assert model.training and not model.backbone.training
    assert all(a.training for _, a in model._attached) and model.head.training
    assert not model.head.weight.requires_grad and "head.weight" in model.trainable_state_dict()
    counts = model.parameter_counts()
    assert counts["trainable"] == counts["adapter"] and counts["state"] == counts["adapter"] + counts["head"]
    trained_head = create_model(backbone, "adaptmlp", K, seed=3)
    torch.testing.assert_close(model.head.weight, trained_head.head.weight)  # the same seeded init
    model.eval()
    assert not model.training and not model.backbone.training


# ------------------------------------------------------------------------------------------- stable names
def test_stable_names_examples(backbones: dict[str, Backbone]) -> None:
    bapat = create_model(backbones["swin3d-tiny"], "bapat", K).trainable_state_dict()
    assert bapat["blocks.3.patt.down.weight"].shape == (128, 32)  # stage 1 of swin3d-tiny: C = 32
    assert bapat["blocks.3.patt.up.weight"].shape == (64, 128)
    assert bapat["blocks.3.adaptmlp.up.bias"].shape == (32,)
    lora = create_model(backbones["videomae-tiny"], "lora", K).trainable_state_dict()
    assert lora["blocks.0.lora.q.A"].shape == (16, 64) and lora["blocks.0.lora.v.B"].shape == (64, 16)
    bitfit = create_model(backbones["videomae-tiny"], "bitfit", K).trainable_state_dict()
    assert {"backbone.blocks.0.attn.q_bias", "backbone.blocks.0.norm1.bias", "backbone.fc_norm.bias"} <= set(bitfit)
    swin_bitfit = create_model(backbones["swin3d-tiny"], "bitfit", K).trainable_state_dict()
    assert "backbone.layers.0.blocks.1.norm1.bias" in swin_bitfit
    assert "backbone.layers.0.blocks.1.attn.relative_position_bias_table" in swin_bitfit  # V-PETL Table 3's BitFit
    no_tables = create_model(backbones["swin3d-tiny"], make_config("bitfit", position_tables=False), K)
    assert not any("relative_position_bias_table" in k for k in no_tables.trainable_state_dict())
    st = create_model(backbones["clip-vit-tiny"], make_config("st_adapter", positions="pre_attn,pre_mlp"), K)
    assert st.expected_shapes()["blocks.1.st_adapter.pre_attn.conv.weight"] == (384, 1, 3, 1, 1)
    dp = create_model(backbones["clip-vit-tiny"], "dualpath", K).expected_shapes()
    assert dp["blocks.0.dualpath.temporal_mlp.down.weight"] == (128, 64) and dp["head.weight"] == (K, 128)
    learn = create_model(backbones["clip-vit-tiny"], make_config("patt", learnable_scale=True), K)
    assert learn.expected_shapes()["blocks.1.patt.scale"] == ()
    assert learn.stable_named_parameters()["blocks.1.patt.scale"].item() == pytest.approx(0.8)


def test_load_errors_name_the_problem(backbones: dict[str, Backbone]) -> None:
    model = create_model(backbones["videomae-tiny"], "patt", K)
    state = dict(model.trainable_state_dict())
    bad = dict(state)
    del bad["blocks.1.patt.up.bias"]
    bad["blocks.9.patt.down.weight"] = torch.zeros(1)
    bad["head.weight"] = torch.zeros(K + 1, 64)
    with pytest.raises(IncompatibleAdapter) as info:
        model.load_trainable_state_dict(bad)
    message = str(info.value)
    assert "blocks.1.patt.up.bias" in message and "blocks.9.patt.down.weight" in message and "head.weight" in message
    partial = dict(state)
    del partial["head.bias"]
    partial["extra"] = torch.zeros(1)
    report = model.load_trainable_state_dict(partial, strict=False)
    assert report == {"missing": ["head.bias"], "unexpected": ["extra"]}


# --------------------------------------------------------------------------------------------------- configs
def test_defaults_follow_the_spec() -> None:
    p = PattConfig()
    assert (p.bottleneck, p.positions, p.scale, p.learnable_scale, p.train_head) == (128, ("k", "v"), 0.8, False, True)
    a = AdaptMlpConfig()
    assert (a.bottleneck, a.scale, a.mode) == (64, 0.1, "parallel")
    b = BapatConfig()
    assert (b.bottleneck, b.mlp_bottleneck, b.scale, b.mlp_scale) == (128, 64, 0.8, 0.1)
    lo = LoraConfig()
    assert (lo.rank, lo.targets, lo.scaling) == (16, ("q", "v"), 1.0)
    prefix = make_config("prefix").to_dict()  # V-PETL Table 3's row: in the BAPAT scaffold (AdaptMLP r 64, s 0.1)
    assert prefix == {
        "method": "prefix",
        "train_head": True,
        "num_tokens": 16,
        "bottleneck": 128,
        "mlp_bottleneck": 64,
        "mlp_scale": 0.1,
        "mlp_mode": "parallel",
    }
    plain = make_config("prefix_plain").to_dict()
    assert plain == {"method": "prefix_plain", "train_head": True, "num_tokens": 16, "bottleneck": 128}
    assert make_config("bitfit").to_dict() == {"method": "bitfit", "train_head": True, "position_tables": True}
    dp = make_config("dualpath")  # appendix Table A1, K400 column
    assert (dp.grid, dp.num_framesets, dp.spatial_frames, dp.temporal_pre_attn) == (4, 1, 8, False)
    assert dp.combine == "concat"
    assert make_config("st_adapter").bottleneck == 384 and make_config("dualpath").bottleneck == 128


@pytest.mark.parametrize("method", ALL_METHODS)
def test_config_round_trip(method: str) -> None:
    cfg = make_config(method)
    data = cfg.to_dict()
    assert data["method"] == method
    assert method_config_from_dict(data) == cfg
    assert type(cfg).from_dict(data) == cfg


def test_from_dict_is_strict() -> None:
    data = PattConfig().to_dict()
    missing = {k: v for k, v in data.items() if k != "scale"}
    with pytest.raises(InvalidRequest, match="scale"):
        PattConfig.from_dict(missing)
    with pytest.raises(IncompatibleAdapter, match="rank"):
        method_config_from_dict({**data, "rank": 4}, error=IncompatibleAdapter)
    with pytest.raises(IncompatibleAdapter, match="bottleneck"):
        method_config_from_dict({**data, "bottleneck": 0}, error=IncompatibleAdapter)
    with pytest.raises(InvalidRequest, match="not 'patt'"):
        PattConfig.from_dict({**data, "method": "lora"})
    with pytest.raises(InvalidRequest, match="unknown PETL method"):
        method_config_from_dict({"method": "nope"})


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("patt", {"bottleneck": 0}),
        ("patt", {"positions": ()}),
        ("patt", {"positions": "k,x"}),
        ("patt", {"positions": ("k", "k")}),
        ("patt", {"scale": "big"}),
        ("patt", {"train_head": "yes"}),
        ("adaptmlp", {"mode": "serial"}),
        ("lora", {"alpha": -1.0}),
        ("st_adapter", {"kernel_size": 2}),
        ("dualpath", {"combine": "max"}),
        ("linear", {"train_head": False}),
        ("patt", {"rank": 4}),
    ],
)
def test_invalid_options_are_refused(method: str, options: dict) -> None:
    with pytest.raises(InvalidRequest):
        make_config(method, **options)


def test_positions_are_canonical() -> None:
    assert PattConfig(positions=("v", "q")).positions == ("q", "v")
    assert PattConfig(positions="v,k").positions == ("k", "v")
    assert PattConfig(scale=1).scale == 1.0 and isinstance(PattConfig(scale=1).scale, float)


def test_registry_and_create_model_inputs(backbones: dict[str, Backbone]) -> None:
    assert get_method("full").servable is False
    assert "full" not in list_methods(servable_only=True) and "bapat" in list_methods(servable_only=True)
    with pytest.raises(InvalidRequest, match="unknown PETL method"):
        get_method("adapter")
    by_dict = create_model("videomae-tiny", make_config("lora", rank=4).to_dict(), 3)
    assert by_dict.config == LoraConfig(rank=4)
    with pytest.raises(InvalidRequest):
        create_model(backbones["videomae-tiny"], {"method": "lora", "rank": 4}, 3)  # a dict must be complete
    with pytest.raises(InvalidRequest, match="num_classes"):
        create_model(backbones["videomae-tiny"], "lora", 0)


def test_share_backbone(backbones: dict[str, Backbone]) -> None:
    backbone = create_backbone("videomae-tiny")
    first = create_model(backbone, "patt", K, share_backbone=True)
    assert first.backbone is backbone
    with pytest.raises(InvalidRequest, match="already carries adapters"):
        create_model(backbone, "adaptmlp", K, share_backbone=True)
    copied = create_model(backbone, "adaptmlp", K)  # a private copy, without the other model's adapters
    assert copied.backbone is not backbone
    assert set(copied.backbone.adaptable_blocks()[0].adapters) == {"adaptmlp"}
    assert set(backbone.adaptable_blocks()[0].adapters) == {"patt"}
    first.remove_adapters()
    assert not any(len(b.adapters) for b in backbone.adaptable_blocks())
    create_model(backbone, "adaptmlp", K, share_backbone=True)
    with pytest.raises(InvalidRequest, match="in place"):
        create_model(create_backbone("videomae-tiny"), "bitfit", K, share_backbone=True)


# ------------------------------------------------------------------------------------------ method specifics
def test_vpt_shallow_and_deep(backbones: dict[str, Backbone]) -> None:
    for name in ("videomae-tiny", "clip-vit-tiny"):
        shallow = create_model(backbones[name], make_config("vpt", num_tokens=3, deep=False), K)
        assert list(shallow.expected_shapes()) == ["blocks.0.vpt.prompts", "head.weight", "head.bias"]
        tokens = shallow.backbone.forward_tokens(_clip(shallow.backbone))
        plain = backbones[name].forward_tokens(_clip(shallow.backbone))
        assert tokens.shape == plain.shape  # prompts dropped after the last block
        deep = create_model(backbones[name], make_config("vpt", num_tokens=3, deep=True), K)
        depth = len(deep.backbone.blocks)
        assert sorted(k for k in deep.expected_shapes() if k.endswith("vpt.prompts")) == sorted(
            f"blocks.{i}.vpt.prompts" for i in range(depth)
        )  # one prompt set per block
        with torch.no_grad():  # deep prompts of a later block must reach the output (shallow ones cannot)
            clip = _clip(deep.backbone)
            before = deep.backbone.forward_tokens(clip)
            prompts = deep.backbone.blocks[depth - 1].adapters.vpt.prompts
            prompts.add_(torch.randn_like(prompts))  # random: a constant shift per token would vanish in LayerNorm
            after = deep.backbone.forward_tokens(clip)
        assert before.shape == plain.shape and not torch.allclose(before, after)


def test_st_adapter_num_layers(backbones: dict[str, Backbone]) -> None:
    model = create_model(backbones["clip-vit-tiny"], make_config("st_adapter", num_layers=1), K)
    assert {k.split(".")[1] for k in model.expected_shapes() if k.startswith("blocks.")} == {"1"}
    with pytest.raises(InvalidRequest, match="num_layers"):
        create_model(backbones["clip-vit-tiny"], make_config("st_adapter", num_layers=3), K)


def test_dualpath_framesets_tile_frames_row_major() -> None:
    t, size, g = 8, 8, 2
    x = torch.arange(t, dtype=torch.float32).reshape(1, 1, t, 1, 1).expand(1, 3, t, size, size)
    sets = make_framesets(x, grid=g, num_framesets=1)  # (1, 3, 1, 8, 8): frames 0, 2, 4, 6 in a 2×2 grid
    assert sets.shape == (1, 3, 1, size, size)
    tile = size // g
    for r in range(g):
        for c in range(g):
            assert (sets[0, :, 0, r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] == 2 * (r * g + c)).all()
    two = make_framesets(x, grid=g, num_framesets=2)  # all 8 frames, each once: 0-3 in the first set, 4-7 next
    assert two.shape == (1, 3, 2, size, size)
    assert two[0, 0, 1, 0, 0] == 4 and two[0, 0, 1, -1, -1] == 7
    with pytest.raises(InvalidInput, match="temporal path .* needs 12 frames, the clip has 8"):
        make_framesets(x, grid=g, num_framesets=3)  # never repeats frames of a short clip


def test_dualpath_refuses_backbones_served_with_too_few_frames(backbones: dict[str, Backbone]) -> None:
    bb = backbones["clip-vit-tiny"]  # 16-frame clips: the defaults (16 temporal, 8 spatial) fit exactly
    assert bb.input_spec.num_frames == 16
    create_model(bb, "dualpath", K)
    with pytest.raises(UnsupportedMethod, match=r"needs clips of 32 frames .*served with 16-frame clips.*--frames 32"):
        create_model(bb, make_config("dualpath", num_framesets=2), K)
    with pytest.raises(UnsupportedMethod, match="needs clips of 16 frames"):
        create_model(create_backbone("vit-tiny"), "dualpath", K)  # 4-frame clips
    model = create_model(create_backbone("vit-tiny"), make_config("dualpath", grid=2, spatial_frames=4), K)
    with pytest.raises(InvalidInput, match="spatial path needs 4 frames, the clip has 3"):
        model(torch.randn(1, 3, 3, 32, 32))
