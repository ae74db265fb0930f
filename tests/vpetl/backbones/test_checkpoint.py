"""Checkpoints: the original VideoMAE .pth layouts (fine-tuned and pretrain) and vpetl's safetensors round trip, the
official Video Swin-B key set loading strictly, and every refusal (missing / unexpected / mis-shaped keys, unsafe
pickles, empty or unreadable files)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from vpetl.backbones import create_backbone
from vpetl.backbones.checkpoint import (
    convert_swin3d_official,
    convert_videomae_original,
    detect_format,
    load_checkpoint,
    read_state_dict,
    save_backbone,
)
from vpetl.errors import CheckpointError

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the HF reference model is a random init; nothing is downloaded

C, DEPTH, K = 64, 2, 10  # tiny VideoMAE width / depth, classes of the fine-tuned head
ATOL = 1e-5


def _rand(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=g)


# ------------------------------------------------------------------------------- VideoMAE reference
@pytest.fixture(scope="module")
def hf_model() -> Any:
    """A random-init HF ``VideoMAEModel`` (an implementation nobody here wrote): the source of known values."""
    from transformers import VideoMAEConfig, VideoMAEModel

    cfg = VideoMAEConfig(
        hidden_size=C, num_hidden_layers=DEPTH, num_attention_heads=4, intermediate_size=4 * C, image_size=32,
        patch_size=16, num_frames=4, tubelet_size=2,
    )
    cfg._attn_implementation = "eager"
    model = VideoMAEModel(cfg).eval()
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() > 1:
                p.copy_(noise / p[0].numel() ** 0.5)
            else:  # LayerNorm scales around 1, biases around 0: a mis-mapped one shows
                p.copy_(1 + 0.2 * noise if "norm" in name and name.endswith("weight") else 0.2 * noise)
    return model


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    return torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(12))


@pytest.fixture(scope="module")
def hf_out(hf_model: Any, clip: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(pixel_values=clip.permute(0, 2, 1, 3, 4)).last_hidden_state  # HF input is (B, T, C, H, W)


def _hf(sd: dict[str, torch.Tensor], layer: int, *names: str) -> torch.Tensor:
    """An HF block tensor under either naming (transformers 4.x ``q_bias`` or >= 5 ``query.bias``)."""
    for name in names:
        key = f"encoder.layer.{layer}.{name}"
        if key in sd:
            return sd[key]
    raise KeyError(names)


def original_videomae(hf_model: Any, *, pretrain: bool) -> dict[str, torch.Tensor]:
    """The MCG-NJU key layout of PETL_SPEC §3.1, filled with the HF model's weights (so the outputs are known)."""
    hf = hf_model.state_dict()
    g = torch.Generator().manual_seed(13)
    sd = {
        "patch_embed.proj.weight": hf["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": hf["embeddings.patch_embeddings.projection.bias"],
    }
    for i in range(DEPTH):
        b = f"blocks.{i}."
        q = _hf(hf, i, "attention.attention.query.weight")
        k = _hf(hf, i, "attention.attention.key.weight")
        v = _hf(hf, i, "attention.attention.value.weight")
        sd[b + "attn.qkv.weight"] = torch.cat([q, k, v], dim=0)  # fused [3C, C], rows q | k | v
        sd[b + "attn.q_bias"] = _hf(hf, i, "attention.attention.query.bias", "attention.attention.q_bias")
        sd[b + "attn.v_bias"] = _hf(hf, i, "attention.attention.value.bias", "attention.attention.v_bias")
        for ours, theirs in (
            ("norm1", "layernorm_before"), ("norm2", "layernorm_after"), ("attn.proj", "attention.output.dense"),
            ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense"),
        ):
            for p in ("weight", "bias"):
                sd[f"{b}{ours}.{p}"] = _hf(hf, i, f"{theirs}.{p}")
    if not pretrain:
        sd["fc_norm.weight"], sd["fc_norm.bias"] = 1 + 0.1 * _rand(g, C), 0.1 * _rand(g, C)
        sd["head.weight"], sd["head.bias"] = _rand(g, K, C), torch.zeros(K)
        return sd
    sd["norm.weight"], sd["norm.bias"] = 1 + 0.1 * _rand(g, C), 0.1 * _rand(g, C)
    sd = {"encoder." + k: v for k, v in sd.items()}
    dec = 32  # decoder width (384 on ViT-B)
    for j in range(2):
        d = f"decoder.blocks.{j}."
        sd[d + "norm1.weight"], sd[d + "norm1.bias"] = _rand(g, dec), _rand(g, dec)
        sd[d + "attn.qkv.weight"], sd[d + "attn.q_bias"], sd[d + "attn.v_bias"] = (
            _rand(g, 3 * dec, dec), _rand(g, dec), _rand(g, dec),
        )
        sd[d + "attn.proj.weight"], sd[d + "attn.proj.bias"] = _rand(g, dec, dec), _rand(g, dec)
        sd[d + "mlp.fc1.weight"], sd[d + "mlp.fc2.weight"] = _rand(g, 4 * dec, dec), _rand(g, dec, 4 * dec)
    sd["decoder.norm.weight"], sd["decoder.norm.bias"] = _rand(g, dec), _rand(g, dec)
    sd["decoder.head.weight"], sd["decoder.head.bias"] = _rand(g, 3 * 2 * 16 * 16, dec), _rand(g, 3 * 2 * 16 * 16)
    sd["encoder_to_decoder.weight"] = _rand(g, dec, C)
    sd["mask_token"] = _rand(g, 1, 1, dec)
    return sd


def tiny_like_hf(**kw: Any) -> Any:
    return create_backbone("videomae-tiny", embed_dim=C, depth=DEPTH, num_heads=4, norm_eps=1e-12, **kw)


@pytest.mark.parametrize("container", ["model", "module"])
def test_videomae_finetuned_pth(hf_model: Any, hf_out: torch.Tensor, clip: torch.Tensor, tmp_path: Path,
                                container: str) -> None:
    sd = original_videomae(hf_model, pretrain=False)
    assert detect_format(sd) == "videomae"
    path = tmp_path / "videomae_finetuned.pth"
    torch.save({container: sd, "epoch": 9}, path)
    model = tiny_like_hf(checkpoint=path)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_tokens(clip), hf_out, atol=ATOL, rtol=0)
    # qkv rows 0:C -> q, C:2C -> k, 2C:3C -> v; fc_norm taken from the file; the head is dropped.
    qkv = sd["blocks.1.attn.qkv.weight"]
    assert torch.equal(model.blocks[1].attn.q.weight, qkv[:C])
    assert torch.equal(model.blocks[1].attn.k.weight, qkv[C : 2 * C])
    assert torch.equal(model.blocks[1].attn.v.weight, qkv[2 * C :])
    assert torch.equal(model.fc_norm.weight, sd["fc_norm.weight"])
    assert not any(k.startswith("head.") for k in convert_videomae_original(sd))


def test_videomae_pretrain_pth(hf_model: Any, hf_out: torch.Tensor, clip: torch.Tensor, tmp_path: Path) -> None:
    sd = original_videomae(hf_model, pretrain=True)
    assert detect_format(sd) == "videomae"
    assert {"mask_token", "encoder_to_decoder.weight", "encoder.norm.weight", "decoder.head.weight"} <= set(sd)
    path = tmp_path / "pretrain_videomae_tiny.pth"
    torch.save({"model": sd}, path)
    model = tiny_like_hf(checkpoint=path)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_tokens(clip), hf_out, atol=ATOL, rtol=0)
    # The encoder's per-token ``norm`` is dropped; fc_norm starts at the LayerNorm identity.
    assert torch.equal(model.fc_norm.weight, torch.ones(C)) and torch.equal(model.fc_norm.bias, torch.zeros(C))


def test_safetensors_round_trip(hf_model: Any, hf_out: torch.Tensor, clip: torch.Tensor, tmp_path: Path) -> None:
    source = tiny_like_hf()
    load_checkpoint(source, original_videomae(hf_model, pretrain=False))
    path = tmp_path / "backbone.safetensors"
    save_backbone(source, path)
    assert set(read_state_dict(path)) == set(source.state_dict())
    again = tiny_like_hf(checkpoint=path)
    assert again.sha256() == source.sha256() != tiny_like_hf().sha256()
    with torch.no_grad():
        out = again.forward_tokens(clip)
        assert torch.equal(out, source.forward_tokens(clip))
        assert torch.equal(again(clip), source(clip))
    torch.testing.assert_close(out, hf_out, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------- Video Swin-B
STAGES = ((128, 2, 4), (256, 2, 8), (512, 18, 16), (1024, 2, 32))  # (C, blocks, heads) per stage, §3.2


def official_relative_position_index(window: tuple[int, int, int]) -> torch.Tensor:
    """Video-Swin-Transformer ``WindowAttention3D.__init__``, verbatim in substance."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij"))  # 3, Wd, Wh, Ww
    flat = torch.flatten(coords, 1)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += window[0] - 1
    rel[:, :, 1] += window[1] - 1
    rel[:, :, 2] += window[2] - 1
    rel[:, :, 0] *= (2 * window[1] - 1) * (2 * window[2] - 1)
    rel[:, :, 1] *= 2 * window[2] - 1
    return rel.sum(-1)


def official_swin_b_shapes() -> dict[str, tuple[int, ...]]:
    """Every key of the official K400 Swin-B checkpoint with its shape, written from the PETL_SPEC §3.2 table."""
    shapes: dict[str, tuple[int, ...]] = {
        "backbone.patch_embed.proj.weight": (128, 3, 2, 4, 4),
        "backbone.patch_embed.proj.bias": (128,),
        "backbone.patch_embed.norm.weight": (128,),
        "backbone.patch_embed.norm.bias": (128,),
    }
    for s, (c, blocks, heads) in enumerate(STAGES):
        for j in range(blocks):
            b = f"backbone.layers.{s}.blocks.{j}."
            shapes |= {
                b + "norm1.weight": (c,), b + "norm1.bias": (c,),
                b + "attn.relative_position_bias_table": (2535, heads),
                b + "attn.relative_position_index": (392, 392),
                b + "attn.qkv.weight": (3 * c, c), b + "attn.qkv.bias": (3 * c,),
                b + "attn.proj.weight": (c, c), b + "attn.proj.bias": (c,),
                b + "norm2.weight": (c,), b + "norm2.bias": (c,),
                b + "mlp.fc1.weight": (4 * c, c), b + "mlp.fc1.bias": (4 * c,),
                b + "mlp.fc2.weight": (c, 4 * c), b + "mlp.fc2.bias": (c,),
            }
        if s < 3:
            d = f"backbone.layers.{s}.downsample."
            shapes |= {d + "reduction.weight": (2 * c, 4 * c), d + "norm.weight": (4 * c,), d + "norm.bias": (4 * c,)}
    shapes |= {"backbone.norm.weight": (1024,), "backbone.norm.bias": (1024,)}
    shapes |= {"cls_head.fc_cls.weight": (400, 1024), "cls_head.fc_cls.bias": (400,)}
    return shapes


@pytest.fixture(scope="module")
def swin_b() -> Any:
    return create_backbone("swin3d-b")


@pytest.fixture(scope="module")
def swin_official() -> dict[str, Any]:
    g = torch.Generator().manual_seed(21)
    index = official_relative_position_index((8, 7, 7))
    sd: dict[str, torch.Tensor] = {}
    for key, shape in official_swin_b_shapes().items():
        sd[key] = index.clone() if key.endswith("relative_position_index") else 0.02 * torch.randn(shape, generator=g)
    return {"state_dict": sd, "meta": {"mmaction2_version": "0.x"}}


def test_official_swin_b_key_set_matches_the_model(swin_b: Any, swin_official: dict[str, Any]) -> None:
    sd = swin_official["state_dict"]
    index = sd["backbone.layers.0.blocks.0.attn.relative_position_index"]
    assert index.dtype == torch.int64 and index.shape == (392, 392)
    float_params = sum(v.numel() for k, v in sd.items() if k.startswith("backbone.") and v.is_floating_point())
    assert float_params == 87_638_984  # the table itself reproduces the verified total
    ours = {k: tuple(v.shape) for k, v in swin_b.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in convert_swin3d_official(sd).items()}
    assert ours == theirs


def test_official_swin_b_loads_strictly(swin_b: Any, swin_official: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "swin_base_patch244_window877_kinetics400_22k.pth"
    torch.save(swin_official, path)
    assert load_checkpoint(swin_b, path) == "swin3d"
    sd = swin_official["state_dict"]
    loaded = swin_b.state_dict()
    for key, value in loaded.items():
        assert torch.equal(value, sd["backbone." + key]), key
    assert swin_b.sha256() == swin_b.sha256(refresh=True)  # the cached hash was refreshed by the load


def _variant(swin_official: dict[str, Any], drop: str | None = None, **replace: torch.Tensor) -> dict[str, Any]:
    sd = dict(swin_official["state_dict"])
    if drop:
        del sd[drop]
    sd.update(replace)
    return {"state_dict": sd, "meta": {}}


def test_missing_key_is_named(swin_b: Any, swin_official: dict[str, Any]) -> None:
    before = swin_b.sha256(refresh=True)
    bad = _variant(swin_official, drop="backbone.layers.2.blocks.5.attn.qkv.weight")
    with pytest.raises(CheckpointError, match=r"missing keys: layers\.2\.blocks\.5\.attn\.qkv\.weight") as info:
        load_checkpoint(swin_b, bad)
    assert "swin3d-b" in info.value.message and info.value.code == "checkpoint_error"
    assert swin_b.sha256(refresh=True) == before  # a refused load changes nothing


def test_unexpected_key_is_named(swin_b: Any, swin_official: dict[str, Any]) -> None:
    bad = _variant(swin_official, **{"backbone.layers.0.blocks.1.attn.logit_scale": torch.zeros(4)})
    with pytest.raises(CheckpointError, match=r"unexpected keys: layers\.0\.blocks\.1\.attn\.logit_scale"):
        load_checkpoint(swin_b, bad)


def test_mis_shaped_key_is_named(swin_b: Any, swin_official: dict[str, Any]) -> None:
    table = torch.zeros(5239, 4)  # the 16×7×7 (SSv2) table in an 8×7×7 model
    bad = _variant(swin_official, **{"backbone.layers.0.blocks.0.attn.relative_position_bias_table": table})
    with pytest.raises(CheckpointError, match=r"mis-shaped keys: layers\.0\.blocks\.0\.attn\.relative_position_bias_"
                                              r"table: checkpoint \(5239, 4\) vs model \(2535, 4\)"):
        load_checkpoint(swin_b, bad)


def test_many_missing_keys_are_summarised() -> None:
    model = create_backbone("videomae-tiny")
    sd = model.state_dict()
    with pytest.raises(CheckpointError, match=r"missing keys: .*\(\d+ in all\)"):
        load_checkpoint(model, {"patch_embed.proj.weight": sd["patch_embed.proj.weight"]})


# ------------------------------------------------------------------------------------ unsafe / bad files
class _Custom:
    """A class no weights-only unpickler knows."""

    def __init__(self) -> None:
        self.note = "not a tensor"


class _Exploit:
    """The classic pickle payload: calling a global on load (here: creating a marker directory)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.mkdir, (str(self.marker),)


@pytest.mark.parametrize("payload", ["custom", "exploit"])
def test_pickled_objects_are_refused(tmp_path: Path, payload: str) -> None:
    marker = tmp_path / "was_unpickled"
    obj = _Custom() if payload == "custom" else _Exploit(marker)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "extra": obj}, path)
    with pytest.raises(CheckpointError, match=r"weights_only=True"):
        read_state_dict(path)
    with pytest.raises(CheckpointError, match=r"weights_only=True"):
        create_backbone("videomae-tiny", checkpoint=path)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["empty.pth", "empty.safetensors", "empty.bin"])
def test_empty_file_is_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty or truncated"):
        create_backbone("videomae-tiny", checkpoint=path)


def test_unreadable_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="cannot read safetensors"):
        read_state_dict(garbage)
    garbage_pth = tmp_path / "garbage.pth"
    garbage_pth.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="weights_only"):
        read_state_dict(garbage_pth)
    bare = tmp_path / "bare_tensor.pth"
    torch.save(torch.zeros(3), bare)
    with pytest.raises(CheckpointError, match="expected a dict of tensors"):
        read_state_dict(bare)
    no_tensors = tmp_path / "no_tensors.pth"
    torch.save({"model": {"epoch": 3}}, no_tensors)
    with pytest.raises(CheckpointError, match="no tensors"):
        read_state_dict(no_tensors)


def test_unknown_format_is_refused() -> None:
    model = create_backbone("videomae-tiny")
    with pytest.raises(CheckpointError, match="unknown checkpoint format 'bogus'"):
        load_checkpoint(model, model.state_dict(), fmt="bogus")


def test_detect_format() -> None:
    w = torch.zeros(1)
    assert detect_format({"videomae.encoder.layer.0.output.dense.weight": w}) == "videomae-hf"
    assert detect_format({"encoder.layer.0.output.dense.weight": w}) == "videomae-hf"
    assert detect_format({"backbone.norm.weight": w}) == "swin3d"
    assert detect_format({"layers.0.blocks.0.attn.relative_position_index": w}) == "swin3d"
    assert detect_format({"encoder.blocks.0.attn.qkv.weight": w, "encoder.blocks.0.attn.q_bias": w}) == "videomae"
    assert detect_format({"blocks.0.attn.q.weight": w, "blocks.0.attn.q_bias": w}) == "vpetl"
