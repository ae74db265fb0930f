"""Backbones by name: ``create_backbone(name, checkpoint=None, **overrides)``.

Every name builds from a fixed seed, so the same name (and overrides) gives the same weights and the same
``sha256()`` in every process: an adapter trained in one process loads in a server started in another.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vpetl.backbones.base import Backbone
from vpetl.backbones.image_vit import FrameViT, ImageViTConfig
from vpetl.backbones.swin3d import Swin3DConfig, SwinTransformer3D
from vpetl.backbones.video_vit import VideoViT, VideoViTConfig
from vpetl.errors import UnknownBackbone
from vpetl.protocol import InputSpec

# Video Swin normalises on the 0–255 scale with ImageNet statistics; vpetl's InputSpec uses the 0–1 scale.
SWIN_SPEC = InputSpec(num_frames=8, sampling="dense", sampling_rate=2, size=224)
VIDEOMAE_SPEC = InputSpec(num_frames=16, sampling="dense", sampling_rate=4, size=224)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VIT_SPEC = InputSpec(num_frames=8, sampling="uniform", sampling_rate=1, size=224, mean=CLIP_MEAN, std=CLIP_STD)
# CLIP clips carry 16 frames spread over the video: DualPath's temporal path samples its own 16 (T_G = 1 frameset
# of 4×4, its appendix Table A1) and its spatial path takes every other one (T_S = 8); ST-Adapter runs on any T.
CLIP_SPEC = InputSpec(num_frames=16, sampling="uniform", sampling_rate=1, size=224, mean=CLIP_MEAN, std=CLIP_STD)
# OpenAI CLIP's visual tower: QuickGELU, ln_pre, no bias on the patch conv, LayerNorm eps 1e-5.
CLIP_VISUAL = {"pre_norm": True, "act": "quick_gelu", "patch_bias": False, "norm_eps": 1e-5}
# The demo backbone's clips: 8 frames at stride 2, 64² (a 4×4×4 token grid). Small enough that `vpetl pretrain`
# fits in ~4 minutes on 2 CPU cores and an experiment's 60+ adapter runs in ~30 (README, "Demo backbone").
DEMO_SPEC = InputSpec(
    num_frames=8, sampling="dense", sampling_rate=2, size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)
)


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    description: str
    build: Callable[[dict[str, Any], InputSpec | None], Backbone]


_REGISTRY: dict[str, BackboneEntry] = {}


def register_backbone(name: str, description: str) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    def decorator(build: Callable[..., Backbone]) -> Callable[..., Backbone]:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = BackboneEntry(name, description, build)
        return build

    return decorator


def list_backbones() -> dict[str, str]:
    return {name: entry.description for name, entry in sorted(_REGISTRY.items())}


def _config(cls: type, base: dict[str, Any], overrides: dict[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UnknownBackbone(f"unknown backbone option(s) {unknown}; valid: {sorted(known)}")
    fields = {**base, **overrides}
    for key in ("depths", "num_heads", "patch_size", "window_size", "stem_widths"):
        if isinstance(fields.get(key), list):
            fields[key] = tuple(fields[key])
    return cls(**fields)


def create_backbone(
    name: str,
    *,
    checkpoint: str | Path | None = None,
    input_spec: InputSpec | None = None,
    seed: int = 0,
    freeze: bool = True,
    **overrides: Any,
) -> Backbone:
    """Build a registered backbone, seeded; load ``checkpoint`` strictly if given; frozen and in eval mode."""
    if name not in _REGISTRY:
        raise UnknownBackbone(f"unknown backbone {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _REGISTRY[name].build(overrides, input_spec)
    model.name = name
    if checkpoint is not None:
        from vpetl.backbones.checkpoint import load_checkpoint

        load_checkpoint(model, checkpoint)
    if freeze:
        model.freeze()
    # Hash the frozen weights now, before any method can train some of them in place (BitFit, full tuning):
    # adapters record the hash of the backbone they were trained ON, and deep copies keep the cached value.
    model.sha256()
    return model.eval()


@register_backbone("videomae-b", "VideoMAE ViT-B/16 video transformer (tubelet 2×16×16, 86.2M params)")
def _videomae_b(overrides: dict[str, Any], spec: InputSpec | None) -> Backbone:
    return VideoViT(_config(VideoViTConfig, {}, overrides), spec or VIDEOMAE_SPEC)


@register_backbone("videomae-tiny", "tiny VideoMAE-style ViT for tests (dim 64, depth 2)")
def _videomae_tiny(overrides: dict[str, Any], spec: InputSpec | None) -> Backbone:
    base = {"embed_dim": 64, "depth": 2, "num_heads": 4}
    return VideoViT(
        _config(VideoViTConfig, base, overrides), spec or InputSpec(num_frames=4, sampling_rate=2, size=32)
    )


@register_backbone("swin3d-b", "Video Swin-B (patch 2×4×4, window 8×7×7, depths 2-2-18-2, 87.6M params)")
def _swin3d_b(overrides: dict[str, Any], spec: InputSpec | None) -> Backbone:
    return SwinTransformer3D(_config(Swin3DConfig, {}, overrides), spec or SWIN_SPEC)


@register_backbone("swin3d-tiny", "tiny Video Swin for tests (embed 16, depths 2-2-2-2)")
def _swin3d_tiny(overrides: dict[str, Any], spec: InputSpec | None) -> Backbone:
    base = {"embed_dim": 16, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 4, 8)}
    return SwinTransformer3D(
        _config(Swin3DConfig, base, overrides), spec or InputSpec(num_frames=4, sampling_rate=2, size=56)
    )


@register_backbone("vit-b16", "image ViT-B/16 with CLS, applied per frame (image-to-video methods)")
def _vit_b16(overrides: dict[str, Any], spec: InputSpec | None) -> Backbone:
    return FrameViT(_config(ImageViTConfig, {}, overrides), spec or VIT_SPEC)


@register_backbone("vit-tiny", "tiny per-frame image ViT for tests (dim 64, depth 2, 32² frames)")
def _vit_tiny(overrides: dict[str, Any], spec: InputSpec | None) -> Backbone:
    base = {"embed_dim": 64, "depth": 2, "num_heads": 4, "img_size": 32}
    return FrameViT(
        _config(ImageViTConfig, base, overrides),
        spec or InputSpec(num_frames=4, sampling="uniform", size=32, mean=CLIP_MEAN, std=CLIP_STD),
    )


@register_backbone(
    "clip-vit-b16",
    "OpenAI CLIP ViT-B/16 visual tower, per frame (QuickGELU, ln_pre, 85.8M params without the text projection)",
)
def _clip_vit_b16(overrides: dict[str, Any], spec: InputSpec | None) -> Backbone:
    return FrameViT(_config(ImageViTConfig, CLIP_VISUAL, overrides), spec or CLIP_SPEC)


@register_backbone("clip-vit-tiny", "tiny CLIP-style per-frame ViT for tests (dim 64, depth 2, 16 frames of 32²)")
def _clip_vit_tiny(overrides: dict[str, Any], spec: InputSpec | None) -> Backbone:
    base = {**CLIP_VISUAL, "embed_dim": 64, "depth": 2, "num_heads": 4, "img_size": 32}
    return FrameViT(
        _config(ImageViTConfig, base, overrides),
        spec or InputSpec(num_frames=16, sampling="uniform", size=32, mean=CLIP_MEAN, std=CLIP_STD),
    )


@register_backbone(
    "vpetl-demo",
    "small video ViT (3-conv stem, embed 128, depth 4, max pooling, 8×64² clips) pretrained by `vpetl pretrain` on "
    "synthetic video",
)
def _vpetl_demo(overrides: dict[str, Any], spec: InputSpec | None) -> Backbone:
    base = {"embed_dim": 128, "depth": 4, "num_heads": 2, "pool": "max", "stem_widths": (16, 32, 64)}
    return VideoViT(_config(VideoViTConfig, base, overrides), spec or DEMO_SPEC)
