"""``clip-vit-b16``: OpenAI CLIP's visual tower run per frame, loaded strictly from CLIP / open_clip key names.

The state dicts are built here with the official names and shapes (OpenAI ``clip/model.py`` ``VisionTransformer``:
``conv1`` without bias, ``class_embedding`` (C,), ``positional_embedding`` (1 + g², C), ``ln_pre``,
``transformer.resblocks.N.{ln_1, attn.in_proj_weight/bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``,
``ln_post``, ``proj`` (C, 512)), random-initialised. The forward is pinned to a reference written here from CLIP's
published algorithm: ``nn.MultiheadAttention`` (the module CLIP's ``ResidualAttentionBlock`` uses) fed the official
tensors, QuickGELU ``x·sigmoid(1.702x)``, LayerNorm eps 1e-5; nothing from ``vpetl.backbones`` runs in it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vpetl.backbones import create_backbone
from vpetl.backbones.checkpoint import detect_format, load_checkpoint, save_backbone
from vpetl.backbones.clip import convert_clip_visual, to_clip_visual
from vpetl.backbones.registry import CLIP_MEAN, CLIP_STD
from vpetl.errors import CheckpointError

Tensor = torch.Tensor
ATOL = 1e-5


def official_shapes(width: int, layers: int, patch: int, image: int, out_dim: int) -> dict[str, tuple[int, ...]]:
    """OpenAI CLIP ``VisionTransformer(input_resolution, patch_size, width, layers, heads, output_dim)`` keys."""
    grid = image // patch
    shapes: dict[str, tuple[int, ...]] = {
        "conv1.weight": (width, 3, patch, patch),
        "class_embedding": (width,),
        "positional_embedding": (grid * grid + 1, width),
        "ln_pre.weight": (width,),
        "ln_pre.bias": (width,),
    }
    for i in range(layers):
        b = f"transformer.resblocks.{i}."
        shapes.update(
            {
                b + "attn.in_proj_weight": (3 * width, width),
                b + "attn.in_proj_bias": (3 * width,),
                b + "attn.out_proj.weight": (width, width),
                b + "attn.out_proj.bias": (width,),
                b + "ln_1.weight": (width,),
                b + "ln_1.bias": (width,),
                b + "mlp.c_fc.weight": (4 * width, width),
                b + "mlp.c_fc.bias": (4 * width,),
                b + "mlp.c_proj.weight": (width, 4 * width),
                b + "mlp.c_proj.bias": (width,),
                b + "ln_2.weight": (width,),
                b + "ln_2.bias": (width,),
            }
        )
    shapes.update({"ln_post.weight": (width,), "ln_post.bias": (width,), "proj": (width, out_dim)})
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], seed: int, dtype: torch.dtype = torch.float32) -> dict:
    """O(1)-effect random weights: LayerNorm weights near 1, other vectors small, matrices ~ 1/sqrt(fan_in)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=g, dtype=torch.float64)
        if key in ("class_embedding", "positional_embedding"):
            t = noise
        elif len(shape) >= 2:
            t = noise / (torch.tensor(shape[1:]).prod().double().sqrt())
        elif key.endswith("weight") and ".ln_" in f".{key}":
            t = 1.0 + 0.2 * noise
        else:
            t = 0.2 * noise
        out[key] = t.to(dtype)
    return out


TINY = {"width": 64, "layers": 2, "patch": 16, "image": 32, "out_dim": 32}  # clip-vit-tiny's shapes
B16 = {"width": 768, "layers": 12, "patch": 16, "image": 224, "out_dim": 512}


# ------------------------------------------------------------------------------------- reference forward
def ln(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    return F.layer_norm(x, (x.shape[-1],), w, b, eps=1e-5)  # CLIP's LayerNorm: torch's default eps


def quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


def clip_image_tokens(sd: dict[str, Tensor], images: Tensor, heads: int) -> Tensor:
    """CLIP ``VisionTransformer.forward`` up to ``ln_post``: (N, 3, H, W) -> (N, 1 + g², C) tokens."""
    x = F.conv2d(images, sd["conv1.weight"], stride=sd["conv1.weight"].shape[-1])  # (N, C, g, g), no bias
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (N, g², C)
    cls = sd["class_embedding"] + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
    x = torch.cat([cls, x], dim=1) + sd["positional_embedding"]
    x = ln(x, sd["ln_pre.weight"], sd["ln_pre.bias"])
    width = x.shape[-1]
    i = 0
    while f"transformer.resblocks.{i}.ln_1.weight" in sd:
        p = f"transformer.resblocks.{i}."
        mha = torch.nn.MultiheadAttention(width, heads, batch_first=True).to(x.dtype)
        with torch.no_grad():
            mha.in_proj_weight.copy_(sd[p + "attn.in_proj_weight"])
            mha.in_proj_bias.copy_(sd[p + "attn.in_proj_bias"])
            mha.out_proj.weight.copy_(sd[p + "attn.out_proj.weight"])
            mha.out_proj.bias.copy_(sd[p + "attn.out_proj.bias"])
            h = ln(x, sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
            x = x + mha(h, h, h, need_weights=False)[0]
        h = ln(x, sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        h = quick_gelu(h @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"])
        x = x + h @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]
        i += 1
    return x


@pytest.mark.parametrize("frames", [1, 3])
def test_forward_matches_clip_reference(frames: int) -> None:
    sd = random_state(official_shapes(**TINY), seed=3, dtype=torch.float64)
    bb = create_backbone("clip-vit-tiny").double()
    assert load_checkpoint(bb, sd) == "clip"
    x = torch.randn(2, 3, frames, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    images = x.permute(0, 2, 1, 3, 4).reshape(2 * frames, 3, 32, 32)  # each frame an image, clip-major
    want = clip_image_tokens(sd, images, heads=4)
    with torch.no_grad():
        got = bb.forward_tokens(x)
        pooled = bb(x)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    cls = want[:, 0].reshape(2, frames, -1).mean(dim=1)  # ST-Adapter's head input: mean of frame CLS, ln_post
    torch.testing.assert_close(pooled, ln(cls, sd["ln_post.weight"], sd["ln_post.bias"]), atol=ATOL, rtol=0)
    if frames == 1:  # one frame is CLIP's image feature before ``@ proj``
        image = ln(want[:, 0], sd["ln_post.weight"], sd["ln_post.bias"])
        torch.testing.assert_close(pooled, image, atol=ATOL, rtol=0)


def test_reference_has_teeth() -> None:
    """GELU instead of QuickGELU, or eps 1e-6, moves the output by far more than the tolerance."""
    sd = random_state(official_shapes(**TINY), seed=3, dtype=torch.float64)
    bb = create_backbone("clip-vit-tiny").double()
    load_checkpoint(bb, sd)
    x = torch.randn(1, 3, 1, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        got = bb.forward_tokens(x)
        bb.blocks[0].mlp.act = torch.nn.GELU()
        assert (bb.forward_tokens(x) - got).abs().max() > 1e-3
    vit = create_backbone("vit-tiny", pre_norm=True).double()  # timm layout: GELU, eps 1e-6, a patch bias
    with pytest.raises(CheckpointError):
        load_checkpoint(vit, sd)


# --------------------------------------------------------------------------------------- ViT-B/16 itself
@pytest.fixture(scope="module")
def b16_state() -> dict[str, Tensor]:
    return random_state(official_shapes(**B16), seed=0)


@pytest.fixture(scope="module")
def b16():
    return create_backbone("clip-vit-b16")


def test_b16_layout_and_count(b16, b16_state: dict[str, Tensor]) -> None:
    c = b16.config
    assert (c.act, c.pre_norm, c.patch_bias, c.norm_eps) == ("quick_gelu", True, False, 1e-5)
    assert b16.patch_embed.proj.bias is None and b16.norm.eps == 1e-5 and b16.blocks[0].norm1.eps == 1e-5
    assert (b16.input_spec.mean, b16.input_spec.std) == (CLIP_MEAN, CLIP_STD)
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073) and CLIP_STD == (0.26862954, 0.26130258, 0.27577711)
    official = sum(t.numel() for t in b16_state.values())
    assert official == 86_192_640  # CLIP ViT-B/16 visual tower, proj included
    assert b16.num_params() == official - 768 * 512 == 85_799_424  # proj (into the text space) is not held


def test_b16_loads_official_names(b16, b16_state: dict[str, Tensor]) -> None:
    before = b16.sha256()
    assert load_checkpoint(b16, b16_state) == "clip"
    sd = b16.frozen_state_dict()
    assert torch.equal(sd["blocks.11.attn.qkv.weight"], b16_state["transformer.resblocks.11.attn.in_proj_weight"])
    assert torch.equal(sd["cls_token"].reshape(-1), b16_state["class_embedding"])
    assert torch.equal(sd["pos_embed"][0], b16_state["positional_embedding"])
    assert torch.equal(sd["norm_pre.bias"], b16_state["ln_pre.bias"])
    assert torch.equal(sd["blocks.4.mlp.fc2.weight"], b16_state["transformer.resblocks.4.mlp.c_proj.weight"])
    assert b16.sha256() != before
    back = to_clip_visual(sd)  # the inverse table gives the official names and shapes back
    assert set(back) == set(b16_state) - {"proj"}
    assert all(torch.equal(back[k], b16_state[k]) for k in back)


def test_open_clip_prefixed_file_loads_like_the_bare_tower(tmp_path) -> None:
    """open_clip / a whole OpenAI CLIP model: visual keys under ``visual.``, the text tower beside them (dropped)."""
    from safetensors.torch import save_file

    bare = random_state(official_shapes(**TINY), seed=2)
    whole = {f"visual.{k}": v for k, v in bare.items()}
    whole.update(
        {
            "positional_embedding": torch.zeros(77, 32),
            "token_embedding.weight": torch.zeros(10, 32),
            "transformer.resblocks.0.ln_1.weight": torch.ones(32),
            "ln_final.weight": torch.ones(32),
            "text_projection": torch.zeros(32, 32),
            "logit_scale": torch.tensor(4.6),
        }
    )
    assert detect_format(whole) == detect_format(bare) == "clip"
    save_file(whole, str(tmp_path / "open_clip.safetensors"))
    from_file = create_backbone("clip-vit-tiny", checkpoint=tmp_path / "open_clip.safetensors")
    direct = create_backbone("clip-vit-tiny")
    load_checkpoint(direct, bare)
    assert from_file.sha256() == direct.sha256() != create_backbone("clip-vit-tiny").sha256()
    save_backbone(from_file, tmp_path / "own.safetensors")  # vpetl's own layout round-trips
    assert create_backbone("clip-vit-tiny", checkpoint=tmp_path / "own.safetensors").sha256() == direct.sha256()


def test_strict_refusals_name_the_official_keys() -> None:
    sd = random_state(official_shapes(**TINY), seed=1)
    bb = create_backbone("clip-vit-tiny")
    before = bb.sha256()
    broken = dict(sd)
    del broken["transformer.resblocks.1.ln_2.bias"], broken["ln_pre.weight"]
    with pytest.raises(
        CheckpointError, match=r"missing official keys: ln_pre\.weight, transformer\.resblocks\.1\.ln_2"
    ):
        load_checkpoint(bb, broken)
    with pytest.raises(CheckpointError, match=r"conv1\.bias.*timm-style ViT"):
        convert_clip_visual({**sd, "conv1.bias": torch.zeros(64)})
    with pytest.raises(
        CheckpointError, match=r"not part of a CLIP visual tower: transformer\.resblocks\.0\.attn\.extra"
    ):
        convert_clip_visual({**sd, "transformer.resblocks.0.attn.extra": torch.zeros(1)})
    deeper = random_state(official_shapes(**{**TINY, "layers": 3}), seed=1)
    with pytest.raises(CheckpointError, match=r"unexpected keys: blocks\.2\."):
        load_checkpoint(bb, deeper)  # 3 blocks into a depth-2 model
    other_size = random_state(official_shapes(**{**TINY, "image": 48}), seed=1)
    with pytest.raises(
        CheckpointError, match=r"mis-shaped keys: pos_embed: checkpoint \(1, 10, 64\) vs model \(1, 5, 64\)"
    ):
        load_checkpoint(bb, other_size)
    gap = {k: v for k, v in sd.items() if not k.startswith("transformer.resblocks.0.")}
    with pytest.raises(CheckpointError, match=r"transformer\.resblocks\.0\.ln_1\.weight"):
        convert_clip_visual(gap)  # block 0 absent while block 1 is there
    assert bb.sha256(refresh=True) == before  # nothing was copied by any refused load
