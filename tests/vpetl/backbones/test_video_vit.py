"""Video ViT (VideoMAE-style): numerical parity with HF transformers' VideoMAE, clip lengths and sizes, the fixed
sin-cos table, and clear refusals of clips the architecture cannot take."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

from vpetl.backbones import create_backbone
from vpetl.backbones.checkpoint import convert_videomae_hf, detect_format, load_checkpoint
from vpetl.backbones.layers import sincos_position_table
from vpetl.errors import CheckpointError, InvalidInput

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: every HF model here is a random init

# A tiny VideoMAE that both implementations can build: 4 frames of 32², tubelet 2, patch 16 -> 2·2·2 = 8 tokens.
HF_KW: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 256,
    "image_size": 32,
    "patch_size": 16,
    "num_frames": 4,
    "tubelet_size": 2,
    "hidden_act": "gelu",
}
ATOL = 1e-5


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random and O(1) in effect (HF's init leaves biases 0 and LayerNorms at identity, which
    would hide a mis-mapped bias or LayerNorm)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() >= 2:
                p.copy_(noise / p[0].numel() ** 0.5)
            elif name.endswith("weight"):  # LayerNorm scale
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.2 * noise)


def hf_config(**extra: Any) -> Any:
    from transformers import VideoMAEConfig

    cfg = VideoMAEConfig(**HF_KW, **extra)
    cfg._attn_implementation = "eager"  # the explicit softmax(QKᵀ/√d)V path, not the SDPA kernel we use
    return cfg


@pytest.fixture(scope="module")
def hf_model() -> Any:
    from transformers import VideoMAEModel

    model = VideoMAEModel(hf_config()).eval()
    randomize(model, seed=1)
    return model


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    return torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(2))  # ours: (B, C, T, H, W)


def hf_tokens(model: Any, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=x.permute(0, 2, 1, 3, 4)).last_hidden_state  # HF: (B, T, C, H, W)


def tiny_like_hf(**overrides: Any) -> Any:
    return create_backbone("videomae-tiny", embed_dim=64, depth=2, num_heads=4, norm_eps=1e-12, **overrides)


@pytest.fixture(scope="module")
def tiny() -> Any:
    return create_backbone("videomae-tiny")


# ------------------------------------------------------------------------------------------- HF parity
def test_hf_videomae_model_parity(hf_model: Any, clip: torch.Tensor) -> None:
    ours = tiny_like_hf()
    assert load_checkpoint(ours, hf_model.state_dict()) == "videomae-hf"
    with torch.no_grad():
        got = ours.forward_tokens(clip)
    want = hf_tokens(hf_model, clip)
    assert got.shape == want.shape == (2, 8, 64)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    # The match comes from the converted weights: the same architecture with its own seeded init is far off.
    hf_sd = hf_model.state_dict()
    assert torch.equal(ours.blocks[1].attn.v.weight, hf_sd["encoder.layer.1.attention.attention.value.weight"])
    with torch.no_grad():
        assert (tiny_like_hf().forward_tokens(clip) - want).abs().max() > 0.1


def test_hf_legacy_q_bias_names(hf_model: Any, clip: torch.Tensor) -> None:
    """transformers 4.x files (and PETL_SPEC §3.1) name the biases ``q_bias`` / ``v_bias``; >= 5 uses
    ``query.bias`` / ``value.bias``. Both layouts convert to the same model."""
    sd = {}
    for key, value in hf_model.state_dict().items():
        key = key.replace("attention.attention.query.bias", "attention.attention.q_bias")
        sd[key.replace("attention.attention.value.bias", "attention.attention.v_bias")] = value
    assert any(k.endswith("q_bias") for k in sd)
    ours = tiny_like_hf()
    load_checkpoint(ours, sd)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_tokens(clip), hf_tokens(hf_model, clip), atol=ATOL, rtol=0)


def test_hf_classification_state_dict(clip: torch.Tensor) -> None:
    """VideoMAEForVideoClassification: ``videomae.`` prefix, fc_norm kept, classifier dropped; the pooled feature
    (mean over tokens -> fc_norm, HF eps 1e-5) matches through an identity classifier."""
    from transformers import VideoMAEForVideoClassification

    hf = VideoMAEForVideoClassification(hf_config(num_labels=64)).eval()
    randomize(hf, seed=3)
    with torch.no_grad():
        hf.classifier.weight.copy_(torch.eye(64))
        hf.classifier.bias.zero_()
    sd = hf.state_dict()
    assert "fc_norm.weight" in sd and "classifier.weight" in sd and "videomae.layernorm.weight" not in sd
    assert detect_format(sd) == "videomae-hf"
    converted = convert_videomae_hf(sd)
    assert not any(k.startswith("classifier") for k in converted)
    ours = tiny_like_hf(fc_norm_eps=1e-5)
    load_checkpoint(ours, sd)
    assert torch.equal(ours.fc_norm.weight, sd["fc_norm.weight"])
    with torch.no_grad():
        logits = hf(pixel_values=clip.permute(0, 2, 1, 3, 4)).logits
        torch.testing.assert_close(ours(clip), logits, atol=ATOL, rtol=0)


def test_hf_final_layernorm_is_refused() -> None:
    """``use_mean_pooling=False`` adds a per-token ``layernorm`` that a mean-pooled encoder does not have: refused by
    name rather than silently dropped."""
    from transformers import VideoMAEModel

    sd = VideoMAEModel(hf_config(use_mean_pooling=False)).state_dict()
    assert "layernorm.weight" in sd
    with pytest.raises(CheckpointError, match=r"unexpected keys: layernorm\.bias, layernorm\.weight"):
        load_checkpoint(tiny_like_hf(), sd)


# ------------------------------------------------------------------------------------ position table
def test_sincos_matches_hf_formula_and_is_a_prefix() -> None:
    from transformers.models.videomae.modeling_videomae import get_sinusoid_encoding_table

    want = get_sinusoid_encoding_table(32, 64)[0]  # HF's numpy implementation, (N, C)
    torch.testing.assert_close(sincos_position_table(32, 64), want.float(), atol=1e-6, rtol=0)
    # ViT-B at 224²: 8 frames -> 784 tokens, the first rows of the 16-frame (1568-token) table.
    t8, t16 = sincos_position_table(784, 768), sincos_position_table(1568, 768)
    assert torch.equal(t8, t16[:784])


def test_position_table_8_frames_is_prefix_of_16(tiny: Any) -> None:
    n8 = tiny.token_info(8, 32)["tokens"]
    n16 = tiny.token_info(16, 32)["tokens"]
    assert (n8, n16) == (16, 32)
    t8 = tiny.position_table(n8, torch.device("cpu"), torch.float32)
    t16 = tiny.position_table(n16, torch.device("cpu"), torch.float32)
    assert torch.equal(t8, t16[:n8])
    assert not any(k.startswith("pos") for k in tiny.state_dict())  # fixed table: not a parameter or buffer


# ------------------------------------------------------------------------------- clip lengths, sizes
@pytest.mark.parametrize(("frames", "size"), [(2, 32), (4, 32), (8, 32), (16, 32), (32, 32), (8, 48), (8, 64)])
def test_clip_lengths_and_sizes(tiny: Any, frames: int, size: int) -> None:
    info = tiny.token_info(frames, size)
    assert info["grid"] == [frames // 2, size // 16, size // 16]
    assert info["tokens"] == (frames // 2) * (size // 16) ** 2
    x = torch.randn(1, 3, frames, size, size)
    with torch.no_grad():
        tokens = tiny.forward_tokens(x)
        pooled = tiny(x)
    assert tokens.shape == (1, info["tokens"], 64)
    assert pooled.shape == (1, 64)
    assert torch.isfinite(pooled).all()


def test_batch_rows_are_independent(tiny: Any) -> None:
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        both = tiny(x)
        single = tiny(x[1:])
    torch.testing.assert_close(both[1:], single, atol=1e-6, rtol=0)


def test_videomae_b_token_counts() -> None:
    """PETL_SPEC §2.4: 784 tokens for 8 frames and 1568 for 16 at 224² (no model needed: token_info is pure)."""
    from vpetl.backbones.video_vit import VideoViT, VideoViTConfig
    from vpetl.protocol import InputSpec

    model = VideoViT(VideoViTConfig(embed_dim=16, depth=0, num_heads=1), InputSpec())
    assert model.token_info(8, 224)["tokens"] == 784
    assert model.token_info(16, 224)["tokens"] == 1568


# -------------------------------------------------------------------------------------- bad clips
BAD_CLIPS = [
    pytest.param((1, 1, 4, 32, 32), torch.float32, r"3 colour channels.*got 1", id="one-channel"),
    pytest.param((1, 4, 4, 32, 32), torch.float32, r"3 colour channels.*got 4", id="four-channels"),
    pytest.param((3, 4, 32, 32), torch.float32, r"\(B, 3, T, H, W\).*unsqueeze", id="4d"),
    pytest.param((1, 3, 1, 32, 32), torch.float32, r"at least 2 frames, got 1", id="too-few-frames"),
    pytest.param((1, 3, 3, 32, 32), torch.float32, r"frames \(3\) must be a multiple of the tubelet size 2", id="odd"),
    pytest.param((1, 3, 4, 30, 32), torch.float32, r"multiples of the patch size 16", id="height"),
    pytest.param((1, 3, 4, 32, 40), torch.float32, r"multiples of the patch size 16", id="width"),
    pytest.param((1, 3, 4, 32, 32), torch.uint8, r"float tensor, got torch.uint8", id="uint8"),
    pytest.param((1, 3, 4, 32, 32), torch.int64, r"float tensor, got torch.int64", id="int64"),
]


@pytest.mark.parametrize(("shape", "dtype", "match"), BAD_CLIPS)
def test_bad_clip_is_invalid_input(tiny: Any, shape: tuple[int, ...], dtype: torch.dtype, match: str) -> None:
    x = torch.zeros(shape, dtype=dtype)
    for call in (tiny, tiny.forward_tokens):
        with pytest.raises(InvalidInput, match=match) as info:
            call(x)
        assert info.value.message.startswith("videomae-tiny:")
        assert info.value.code == "invalid_input"


def test_non_tensor_is_invalid_input(tiny: Any) -> None:
    with pytest.raises(InvalidInput, match="expected a torch.Tensor"):
        tiny.forward_tokens([[0.0]])  # type: ignore[arg-type]


def test_max_pooling_takes_the_channel_maximum_over_tokens() -> None:
    from vpetl.backbones.registry import create_backbone

    model = create_backbone("vpetl-demo", embed_dim=32, depth=1, num_heads=2).eval()
    assert model.config.pool == "max"
    clip = torch.randn(2, 3, 8, 64, 64)
    with torch.no_grad():
        tokens = model.forward_tokens(clip)  # (2, 64, 32)
        assert torch.allclose(model(clip), model.fc_norm(tokens.amax(dim=1)), atol=1e-6)
        assert not torch.allclose(model(clip), model.fc_norm(tokens.mean(dim=1)), atol=1e-3)
    with pytest.raises(ValueError, match="pool"):
        create_backbone("vpetl-demo", embed_dim=32, depth=1, num_heads=2, pool="sum")
