"""Video Swin: windows are local, the shifted block's mask stops attention across wrapped regions, the relative
position index matches the official formula, clip lengths / sizes, and clear refusals."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from vpetl.backbones import create_backbone
from vpetl.backbones.hooks import BlockContext
from vpetl.backbones.swin3d import (
    effective_window,
    relative_position_index,
    shift_attention_mask,
    window_partition,
    window_reverse,
)
from vpetl.errors import InvalidInput

GRID = (4, 14, 14)  # stage-0 grid of an 8×56² clip: window (8,7,7) clamps to (4,7,7), shift (4,3,3) to (0,3,3)
CTX = BlockContext(batch_size=1, rows_per_sample=1, grid=GRID)


@pytest.fixture(scope="module")
def model() -> Any:
    return create_backbone("swin3d-tiny")


def strong_copy(block: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of a block with O(1) random weights: at the tiny model's init (std 0.02) a one-token change
    moves other tokens' outputs by ~1e-9, below float32 resolution, which would make "unchanged" vacuous."""
    block = copy.deepcopy(block).double()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in block.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if name.endswith("relative_position_bias_table"):
                p.copy_(0.5 * noise)
            elif p.dim() > 1:
                p.copy_(noise / p.shape[1] ** 0.5)
            else:
                p.copy_(1 + 0.2 * noise if "norm" in name and name.endswith("weight") else 0.2 * noise)
    return block


def token_change(block: torch.nn.Module, mask: torch.Tensor | None, where: tuple[int, int, int]) -> torch.Tensor:
    """(D, H, W) max |Δ output| per token when the input token at ``where`` is perturbed."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, *GRID, block.dim, generator=g, dtype=torch.float64)
    x2 = x.clone()
    x2[(0, *where)] += torch.randn(block.dim, generator=g, dtype=torch.float64)
    with torch.no_grad():
        return (block(x2, mask, CTX) - block(x, mask, CTX)).abs().amax(-1)[0]


# ------------------------------------------------------------------------------------------ windows
def test_grid_and_effective_window(model: Any) -> None:
    info = model.token_info(8, 56)
    stage0 = info["stages"][0]
    assert stage0["grid"] == list(GRID) and stage0["window"] == [4, 7, 7] and stage0["shift"] == [0, 3, 3]
    assert stage0["windows_per_clip"] == 4
    assert effective_window(GRID, (8, 7, 7), (4, 3, 3)) == ((4, 7, 7), (0, 3, 3))
    assert model.layers[0].blocks[0].shift_size == (0, 0, 0)
    assert model.layers[0].blocks[1].shift_size == (4, 3, 3)


def test_window_partition_round_trip() -> None:
    x = torch.randn(2, 4, 14, 14, 3)
    windows = window_partition(x, (4, 7, 7))
    assert windows.shape == (2 * 4, 196, 3)
    assert torch.equal(windows[1], x[0, :, 0:7, 7:14].reshape(196, 3))  # window (0, 1) of sample 0
    assert torch.equal(window_reverse(windows, (4, 7, 7), 2, 4, 14, 14), x)


def test_unshifted_window_attention_is_local(model: Any) -> None:
    """Non-shifted block: perturbing one token changes every token of its window and nothing outside it."""
    block = strong_copy(model.layers[0].blocks[0])
    change = token_change(block, None, (1, 2, 9))  # window (h 0..6, w 7..13)
    inside = torch.zeros(GRID, dtype=torch.bool)
    inside[:, 0:7, 7:14] = True
    assert change[inside].min() > 1e-6
    assert change[~inside].max() == 0


def test_shift_attention_mask_values() -> None:
    """Padded grid 4³, window 2³, shift 1: region of a shifted coordinate c along a dim of size P is 0 for
    c < P − ws, 1 for c < P − shift, else 2; tokens in different regions get −100, the same region 0."""
    padded, ws, shift = (4, 4, 4), (2, 2, 2), (1, 1, 1)
    mask = shift_attention_mask(padded, ws, shift, torch.device("cpu"))
    assert mask.shape == (8, 8, 8)

    def region(c: int, size: int, w: int, s: int) -> int:
        return 0 if c < size - w else (1 if c < size - s else 2)

    ids = torch.zeros(padded, dtype=torch.long)
    for d in range(4):
        for h in range(4):
            for w in range(4):
                ids[d, h, w] = region(d, 4, 2, 1) * 9 + region(h, 4, 2, 1) * 3 + region(w, 4, 2, 1)
    win = window_partition(ids[None, ..., None], ws)[..., 0]  # (nW, N)
    want = torch.where(win[:, :, None] == win[:, None, :], 0.0, -100.0)
    assert torch.equal(mask, want)
    assert torch.equal(mask[0], torch.zeros(8, 8))  # an interior window: one region
    last = mask[-1]  # the corner window: 8 tokens from 8 regions
    assert torch.equal(last, torch.full((8, 8), -100.0).fill_diagonal_(0.0))
    assert set(mask.unique().tolist()) == {-100.0, 0.0}


def test_shifted_block_does_not_attend_across_wrapped_regions(model: Any) -> None:
    """Shifted block (shift 3 in h, w): the window that holds the wrap-around gathers original rows h 10..13 and
    h 0..2. Perturbing a token at h = 0 changes its own region's tokens in that window, never the others; with the
    mask removed it would."""
    block = strong_copy(model.layers[0].blocks[1])
    ws, shift = effective_window(GRID, block.window_size, block.shift_size)
    assert (ws, shift) == ((4, 7, 7), (0, 3, 3))
    padded = GRID  # 4×14×14 is already a multiple of the window
    mask = shift_attention_mask(padded, ws, shift, torch.device("cpu"))
    assert torch.equal(mask, model._mask(GRID, ws, shift, torch.device("cpu")))

    where = (1, 0, 5)  # original (d, h, w); after the roll: h 11, w 2 -> window (h 7..13, w 0..6)
    # That window holds original h ∈ {10..13} ∪ {0..2} and w ∈ {3..9}.
    same_region = torch.zeros(GRID, dtype=torch.bool)
    same_region[:, 0:3, 3:10] = True
    other_region = torch.zeros(GRID, dtype=torch.bool)
    other_region[:, 10:14, 3:10] = True

    change = token_change(block, mask, where)
    assert change[same_region].min() > 1e-6
    assert change[other_region].max() < 1e-12  # masked: exp(−100) never reaches float64 resolution here
    assert change[~(same_region | other_region)].max() == 0  # other windows untouched

    unmasked = token_change(block, None, where)  # sanity: without the mask the wrap-around would leak
    assert unmasked[other_region].min() > 1e-6


def test_relative_position_index_matches_official() -> None:
    def official(window: tuple[int, int, int]) -> torch.Tensor:  # Video-Swin-Transformer WindowAttention3D
        coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij"))
        flat = torch.flatten(coords, 1)
        rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
        for i in range(3):
            rel[:, :, i] += window[i] - 1
        rel[:, :, 0] *= (2 * window[1] - 1) * (2 * window[2] - 1)
        rel[:, :, 1] *= 2 * window[2] - 1
        return rel.sum(-1)

    full = official((8, 7, 7))
    assert full.shape == (392, 392) and full.dtype == torch.int64 and int(full.max()) == 2534
    assert torch.equal(relative_position_index((8, 7, 7), (8, 7, 7)), full)
    # The temporally clamped window (4 frames' worth of tokens) uses the official index[:N, :N].
    assert torch.equal(relative_position_index((4, 7, 7), (8, 7, 7)), full[:196, :196])


def test_position_bias_uses_the_table(model: Any) -> None:
    attn = model.layers[0].blocks[0].attn
    bias = attn.position_bias((2, 7, 7))
    assert bias.shape == (attn.num_heads, 98, 98)
    idx = relative_position_index((2, 7, 7), (8, 7, 7))
    assert torch.equal(bias[0], attn.relative_position_bias_table[idx, 0])


# ------------------------------------------------------------------------------- clip lengths, sizes
@pytest.mark.parametrize(
    ("frames", "size"), [(8, 32), (16, 32), (32, 32), (8, 64), (16, 56), (3, 30), (1, 28), (4, 100)]
)
def test_clip_lengths_and_sizes(model: Any, frames: int, size: int) -> None:
    """Swin pads to the patch and the window, so any length and size run; counts follow token_info."""
    info = model.token_info(frames, size)
    first, last = info["stages"][0], info["stages"][-1]
    assert first["grid"] == [-(-frames // 2), -(-size // 4), -(-size // 4)]
    assert info["tokens"] == first["tokens"] == first["grid"][0] * first["grid"][1] * first["grid"][2]
    x = torch.randn(1, 3, frames, size, size)
    with torch.no_grad():
        tokens = model.forward_tokens(x)
        pooled = model(x)
    assert tokens.shape == (1, *last["grid"], 128)
    assert pooled.shape == (1, 128) and torch.isfinite(pooled).all()


def test_token_info_swin_b_default_clip() -> None:
    from vpetl.backbones.swin3d import Swin3DConfig, SwinTransformer3D
    from vpetl.protocol import InputSpec

    shell = SwinTransformer3D(Swin3DConfig(embed_dim=8, depths=(0, 0, 0, 0), num_heads=(1, 1, 1, 1)), InputSpec())
    stages = shell.token_info(32, 224)["stages"]
    assert [s["grid"] for s in stages] == [[16, 56, 56], [16, 28, 28], [16, 14, 14], [16, 7, 7]]
    assert [s["window"] for s in stages] == [[8, 7, 7]] * 4
    assert [s["windows_per_clip"] for s in stages] == [128, 32, 8, 2]
    assert stages[-1]["shift"] == [4, 0, 0]  # 7×7 fills the window spatially: no spatial shift


BAD_CLIPS = [
    pytest.param((1, 1, 4, 32, 32), torch.float32, r"3 colour channels.*got 1", id="one-channel"),
    pytest.param((3, 4, 32, 32), torch.float32, r"\(B, 3, T, H, W\)", id="4d"),
    pytest.param((1, 3, 4, 32, 32), torch.uint8, r"float tensor, got torch.uint8", id="uint8"),
]


@pytest.mark.parametrize(("shape", "dtype", "match"), BAD_CLIPS)
def test_bad_clip_is_invalid_input(model: Any, shape: tuple[int, ...], dtype: torch.dtype, match: str) -> None:
    x = torch.zeros(shape, dtype=dtype)
    for call in (model, model.forward_tokens):
        with pytest.raises(InvalidInput, match=match) as info:
            call(x)
        assert info.value.message.startswith("swin3d-tiny:")
