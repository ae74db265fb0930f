"""Frozen backbones in plain torch: video ViT (VideoMAE), Video Swin, per-frame image ViT; registry; checkpoints."""

from vpetl.backbones.base import Backbone
from vpetl.backbones.hooks import AdaptableBlock, BlockAdapter, BlockContext
from vpetl.backbones.registry import create_backbone, list_backbones, register_backbone

__all__ = [
    "AdaptableBlock",
    "Backbone",
    "BlockAdapter",
    "BlockContext",
    "create_backbone",
    "list_backbones",
    "register_backbone",
]
