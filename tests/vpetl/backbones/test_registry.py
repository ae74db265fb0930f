"""The backbone registry: pinned parameter counts, seeded determinism across processes, frozen + eval, unknown names,
and the hooks contract every family honours (every hook runs, in order; no-op adapters change nothing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from vpetl.backbones import BlockAdapter, BlockContext, create_backbone, list_backbones, register_backbone
from vpetl.errors import UnknownBackbone

REPO = Path(__file__).resolve().parents[3]
TINY = ["videomae-tiny", "swin3d-tiny", "vit-tiny"]
CLIPS = {"videomae-tiny": (2, 3, 4, 32, 32), "swin3d-tiny": (2, 3, 4, 32, 32), "vit-tiny": (2, 3, 2, 32, 32)}


@pytest.fixture(scope="module")
def videomae_b() -> Any:
    return create_backbone("videomae-b")


@pytest.fixture(scope="module")
def swin3d_b() -> Any:
    return create_backbone("swin3d-b")


@pytest.fixture(scope="module")
def tiny_models() -> dict[str, Any]:
    return {name: create_backbone(name) for name in TINY}


def clip(name: str, seed: int = 0) -> torch.Tensor:
    return torch.randn(CLIPS[name], generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------- names, counts
def test_spec_names_are_registered() -> None:
    names = list_backbones()
    spec = {"videomae-b", "swin3d-b", "vit-b16", "clip-vit-b16", "videomae-tiny", "swin3d-tiny", "vit-tiny"}
    spec |= {"clip-vit-tiny", "vpetl-demo"}
    assert spec <= set(names)
    assert all(isinstance(d, str) and d for d in names.values())


def test_videomae_b_parameter_count(videomae_b: Any) -> None:
    breakdown = videomae_b.param_breakdown()
    assert breakdown["encoder (patch_embed + blocks)"] == 86_225_664  # PETL_SPEC §3.1 (verified)
    assert breakdown["patch_embed"] == 1_180_416
    assert {breakdown[f"blocks.{i}"] for i in range(12)} == {7_087_104}
    assert breakdown["fc_norm"] == 1_536
    assert videomae_b.num_params() == 86_225_664 + 1_536
    assert videomae_b.num_features == 768 and len(videomae_b.adaptable_blocks()) == 12


def test_swin3d_b_parameter_count(swin3d_b: Any) -> None:
    assert swin3d_b.num_params() == 87_638_984  # PETL_SPEC §3.2 (verified)
    breakdown = swin3d_b.param_breakdown()
    assert sum(breakdown.values()) == 87_638_984
    assert set(breakdown) == {"patch_embed", "layers.0", "layers.1", "layers.2", "layers.3", "norm"}
    assert swin3d_b.num_features == 1024 and len(swin3d_b.adaptable_blocks()) == 24


def test_big_backbones_are_frozen_and_in_eval(videomae_b: Any, swin3d_b: Any) -> None:
    for model in (videomae_b, swin3d_b):
        assert not any(p.requires_grad for p in model.parameters())
        assert not any(m.training for m in model.modules())


# ------------------------------------------------------------------------------------ determinism
@pytest.mark.parametrize("name", TINY)
def test_same_name_same_weights(tiny_models: dict[str, Any], name: str) -> None:
    again = create_backbone(name)
    assert again.sha256() == tiny_models[name].sha256()
    assert len(again.sha256()) == 64
    assert create_backbone(name, seed=1).sha256() != again.sha256()


def test_sha256_is_stable_across_processes(tiny_models: dict[str, Any]) -> None:
    code = "from vpetl.backbones import create_backbone; print(create_backbone('videomae-tiny').sha256())"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == tiny_models["videomae-tiny"].sha256()


def test_building_does_not_disturb_the_global_rng() -> None:
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    create_backbone("videomae-tiny")
    assert torch.equal(torch.rand(3), want)


def test_sha256_tracks_weights_not_adapters(tiny_models: dict[str, Any]) -> None:
    model = create_backbone("videomae-tiny")
    before = model.sha256()
    model.blocks[0].adapters["extra"] = nn.Linear(4, 4)  # type: ignore[assignment]
    assert model.sha256(refresh=True) == before
    with torch.no_grad():
        model.blocks[0].attn.proj.bias.add_(1e-3)
    assert model.sha256() == before  # cached …
    assert model.sha256(refresh=True) != before  # … until refreshed


@pytest.mark.parametrize("name", TINY)
def test_frozen_and_eval(tiny_models: dict[str, Any], name: str) -> None:
    model = tiny_models[name]
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training and not any(m.training for m in model.modules())


def test_freeze_keeps_adapters_trainable() -> None:
    model = create_backbone("videomae-tiny")
    model.blocks[1].adapters["a"] = nn.Linear(4, 4)  # type: ignore[assignment]
    model.freeze()
    assert all(p.requires_grad for p in model.blocks[1].adapters.parameters())
    assert not any(p.requires_grad for k, p in model.named_parameters() if ".adapters." not in k)


def test_unfrozen_on_request() -> None:
    model = create_backbone("videomae-tiny", freeze=False)
    assert all(p.requires_grad for p in model.parameters())


def test_unknown_backbone() -> None:
    with pytest.raises(UnknownBackbone, match=r"unknown backbone 'swin3d-x'.*swin3d-b") as info:
        create_backbone("swin3d-x")
    assert info.value.code == "unknown_backbone"


def test_unknown_override() -> None:
    with pytest.raises(UnknownBackbone, match=r"unknown backbone option\(s\) \['embed_dimm'\].*embed_dim"):
        create_backbone("videomae-tiny", embed_dimm=32)


def test_overrides_accept_lists() -> None:
    model = create_backbone("swin3d-tiny", depths=[2, 2, 2, 2], window_size=[2, 7, 7])
    assert model.config.window_size == (2, 7, 7) and model.config.depths == (2, 2, 2, 2)


def test_register_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("videomae-tiny", "again")(lambda overrides, spec: None)  # type: ignore[arg-type,return-value]


# ------------------------------------------------------------------------------------- hooks contract
VIT_ORDER = [
    "pre_block", "pre_attn", "adapt_linear:norm1", "adapt_qkv", "extra_kv", "adapt_linear:proj", "pre_mlp",
    "adapt_linear:norm2", "adapt_linear:fc1", "adapt_linear:fc2", "adapt_mlp", "post_block",
]
SWIN_ORDER = [h for h in VIT_ORDER if h not in ("pre_block", "post_block")]  # no token-adding hooks on windows


class Recorder(BlockAdapter):
    """Returns every input unchanged and records which hook ran, with what it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.ctx: list[BlockContext] = []
        self.qkv_shapes: list[tuple[int, ...]] = []

    def _log(self, hook: str, ctx: BlockContext) -> None:
        self.calls.append(hook)
        self.ctx.append(ctx)

    def pre_block(self, x: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        self._log("pre_block", ctx)
        return x

    def post_block(self, x: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        self._log("post_block", ctx)
        return x

    def pre_attn(self, x: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        self._log("pre_attn", ctx)
        return x

    def adapt_qkv(self, h: Any, q: Any, k: Any, v: Any, ctx: BlockContext) -> tuple[Any, Any, Any]:
        self._log("adapt_qkv", ctx)
        assert h.shape == q.shape == k.shape == v.shape
        self.qkv_shapes.append(tuple(q.shape))
        return q, k, v

    def extra_kv(self, h: torch.Tensor, ctx: BlockContext) -> None:
        self._log("extra_kv", ctx)
        return None

    def adapt_linear(self, name: str, x: torch.Tensor, y: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        self._log(f"adapt_linear:{name}", ctx)
        return y

    def pre_mlp(self, x: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        self._log("pre_mlp", ctx)
        return x

    def adapt_mlp(self, h: torch.Tensor, m: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        self._log("adapt_mlp", ctx)
        assert h.shape == m.shape
        return m


def attach(model: Any, make: Any) -> list[Any]:
    adapters = []
    for block in model.adaptable_blocks():
        block.adapters["probe"] = make()
        adapters.append(block.adapters["probe"])
    return adapters


def detach(model: Any) -> None:
    for block in model.adaptable_blocks():
        if "probe" in block.adapters:
            del block.adapters["probe"]


@pytest.mark.parametrize("name", TINY)
def test_every_hook_runs_in_order(tiny_models: dict[str, Any], name: str) -> None:
    model = tiny_models[name]
    x = clip(name)
    recorders = attach(model, Recorder)
    try:
        with torch.no_grad():
            model(x)
    finally:
        detach(model)
    expected = SWIN_ORDER if name.startswith("swin") else VIT_ORDER
    for i, rec in enumerate(recorders):
        assert rec.calls == expected, (name, i)
        assert {c.block_index for c in rec.ctx} == {i}
        assert {c.batch_size for c in rec.ctx} == {2}
    first = recorders[0]
    if name == "videomae-tiny":  # one row per clip, all 2·2·2 tokens
        assert first.qkv_shapes == [(2, 8, 64)]
        assert first.ctx[0].grid == (2, 2, 2)
    elif name == "vit-tiny":  # one row per frame, CLS + 2·2 patches
        assert first.qkv_shapes == [(2 * 2, 5, 64)]
        assert first.ctx[0].num_prefix_tokens == 1 and first.ctx[0].rows_per_sample == 2
    else:  # one row per window: 4×32² -> grid (2, 8, 8), window (2, 7, 7), 2·2 windows per clip
        assert first.qkv_shapes == [(2 * 4, 2 * 7 * 7, 16)]
        attn_ctx = first.ctx[first.calls.index("adapt_qkv")]
        assert attn_ctx.rows_per_sample == 4 and attn_ctx.grid == (2, 8, 8)
        assert first.ctx[first.calls.index("pre_attn")].rows_per_sample == 1


@pytest.mark.parametrize("name", TINY)
def test_no_op_adapters_are_bitwise_neutral(tiny_models: dict[str, Any], name: str) -> None:
    model = tiny_models[name]
    x = clip(name, seed=1)
    with torch.no_grad():
        plain_tokens, plain = model.forward_tokens(x), model(x)
        attach(model, BlockAdapter)
        try:
            hooked_tokens, hooked = model.forward_tokens(x), model(x)
        finally:
            detach(model)
    assert torch.equal(hooked_tokens, plain_tokens)
    assert torch.equal(hooked, plain)


def test_hooks_can_change_the_output(tiny_models: dict[str, Any]) -> None:
    """The hooks are really on the data path (a neutral result above is not from hooks being skipped)."""

    class AddOne(BlockAdapter):
        def adapt_mlp(self, h: torch.Tensor, m: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
            return m + 1.0

    model = tiny_models["videomae-tiny"]
    x = clip("videomae-tiny")
    with torch.no_grad():
        plain = model.forward_tokens(x)
        model.blocks[1].adapters["probe"] = AddOne()
        try:
            hooked = model.forward_tokens(x)
        finally:
            detach(model)
    torch.testing.assert_close(hooked, plain + 1.0)  # last block's MLP branch feeds the output directly
