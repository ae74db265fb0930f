"""Per-frame image ViT (CLS, fused qkv): frames are independent images, clip lengths and sizes (the learned grid
is resized for other sizes), the pooled feature, and clear refusals."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from vpetl.backbones import create_backbone
from vpetl.errors import InvalidInput


@pytest.fixture(scope="module")
def model() -> Any:
    return create_backbone("vit-tiny")


def test_layout(model: Any) -> None:
    keys = set(model.state_dict())
    assert {"cls_token", "pos_embed", "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias", "norm.weight"} <= keys
    assert model.pos_embed.shape == (1, 1 + 2 * 2, 64)  # 32² frames, patch 16
    assert model.blocks[0].attn.qkv.weight.shape == (3 * 64, 64)
    info = model.token_info(4, 32)
    assert info == {"grid": [4, 2, 2], "tokens": 4 * 5, "attention_rows_per_clip": 4, "tokens_per_attention": 5}


@pytest.mark.parametrize(("frames", "size"), [(1, 32), (8, 32), (16, 32), (32, 32), (8, 48), (4, 64), (3, 16)])
def test_clip_lengths_and_sizes(model: Any, frames: int, size: int) -> None:
    info = model.token_info(frames, size)
    g = size // 16
    assert info["tokens"] == frames * (1 + g * g)
    x = torch.randn(2, 3, frames, size, size)
    with torch.no_grad():
        tokens = model.forward_tokens(x)
        pooled = model(x)
    assert tokens.shape == (2 * frames, info["tokens_per_attention"], 64)
    assert pooled.shape == (2, 64) and torch.isfinite(pooled).all()


def test_frames_are_independent_images(model: Any) -> None:
    x = torch.randn(1, 3, 4, 32, 32)
    x2 = x.clone()
    x2[:, :, 2] += 1.0
    with torch.no_grad():
        a, b = model.forward_tokens(x), model.forward_tokens(x2)
    changed = (a - b).abs().amax(dim=(1, 2))  # per frame
    assert changed[2] > 0
    assert torch.equal(changed[[0, 1, 3]], torch.zeros(3))


def test_pooled_is_mean_of_cls_then_norm(model: Any) -> None:
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        cls = model.forward_tokens(x)[:, 0].reshape(2, 4, -1)
        torch.testing.assert_close(model(x), model.norm(cls.mean(dim=1)), atol=1e-6, rtol=0)


def test_position_embedding_native_and_resized(model: Any) -> None:
    assert model.position_embedding(2, 2) is model.pos_embed
    resized = model.position_embedding(3, 3)
    assert resized.shape == (1, 10, 64)
    assert torch.equal(resized[:, 0], model.pos_embed[:, 0])  # CLS position is never resized


BAD_CLIPS = [
    pytest.param((1, 1, 4, 32, 32), torch.float32, r"3 colour channels.*got 1", id="one-channel"),
    pytest.param((3, 4, 32, 32), torch.float32, r"\(B, 3, T, H, W\).*unsqueeze", id="4d"),
    pytest.param((1, 3, 4, 30, 32), torch.float32, r"\(30×32\) must be multiples of 16", id="height"),
    pytest.param((1, 3, 4, 32, 24), torch.float32, r"\(32×24\) must be multiples of 16", id="width"),
    pytest.param((1, 3, 4, 32, 32), torch.uint8, r"float tensor, got torch.uint8", id="uint8"),
]


@pytest.mark.parametrize(("shape", "dtype", "match"), BAD_CLIPS)
def test_bad_clip_is_invalid_input(model: Any, shape: tuple[int, ...], dtype: torch.dtype, match: str) -> None:
    x = torch.zeros(shape, dtype=dtype)
    for call in (model, model.forward_tokens):
        with pytest.raises(InvalidInput, match=match) as info:
            call(x)
        assert info.value.message.startswith("vit-tiny:")


def test_non_tensor_is_invalid_input(model: Any) -> None:
    for call in (model, model.forward_tokens):
        with pytest.raises(InvalidInput, match="expected a torch.Tensor"):
            call([[0.0]])
