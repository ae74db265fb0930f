"""What every backbone exposes: pooled features for a head, its blocks (where adapters attach), its input spec,
input validation with clear errors, parameter breakdowns, and a content hash that identifies its weights."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from vpetl.backbones.hooks import AdaptableBlock
from vpetl.errors import InvalidInput
from vpetl.protocol import InputSpec

Tensor = torch.Tensor


class Backbone(nn.Module):
    """A frozen feature extractor. Subclasses set ``family``, ``num_features`` and implement the forwards.

    ``forward(x)`` maps a clip batch (B, 3, T, H, W) to pooled features (B, num_features); ``tag`` is passed to
    every hook (DualPath runs two tagged paths through one backbone).
    """

    family: str = "base"
    name: str = "backbone"
    num_features: int
    input_spec: InputSpec

    def adaptable_blocks(self) -> list[AdaptableBlock]:
        """Every block in forward order; ``adaptable_blocks()[i]`` is block ``i`` in adapter tensor names."""
        raise NotImplementedError

    def forward_tokens(self, x: Tensor, tag: str | None = None) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, tag: str | None = None) -> Tensor:
        raise NotImplementedError

    def token_info(self, frames: int, size: int) -> dict[str, Any]:
        """Token counts for a (frames, size, size) clip."""
        raise NotImplementedError

    def min_frames(self) -> int:
        return 1

    def check_input(self, x: Tensor) -> None:
        """Refuse a tensor the architecture cannot take, with a message that says what it needs."""
        if not isinstance(x, torch.Tensor):
            raise InvalidInput(f"{self.name}: expected a torch.Tensor clip batch, got {type(x).__name__}")
        if x.dim() != 5:
            raise InvalidInput(
                f"{self.name}: expected a clip batch of shape (B, 3, T, H, W), got {tuple(x.shape)} "
                "(use x.unsqueeze(0) for a single clip)"
            )
        if x.shape[1] != 3:
            raise InvalidInput(
                f"{self.name}: expected 3 colour channels at dim 1, got {x.shape[1]} (shape {tuple(x.shape)})"
            )
        if not x.is_floating_point():
            raise InvalidInput(f"{self.name}: expected a float tensor, got {x.dtype} (normalise the clip first)")
        if x.shape[2] < self.min_frames():
            raise InvalidInput(f"{self.name}: needs at least {self.min_frames()} frames, got {x.shape[2]}")

    def param_breakdown(self) -> dict[str, int]:
        """Parameter counts per top-level child (stages/blocks are listed by their module names)."""
        out: dict[str, int] = {}
        for name, child in self.named_children():
            n = sum(p.numel() for p in child.parameters())
            if isinstance(child, nn.ModuleList):
                for i, sub in enumerate(child):
                    out[f"{name}.{i}"] = sum(p.numel() for p in sub.parameters())
            elif n:
                out[name] = n
        for name, p in self.named_parameters(recurse=False):
            out[name] = p.numel()
        return out

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def frozen_state_dict(self) -> dict[str, Tensor]:
        """The backbone's own weights (adapters attached to blocks excluded)."""
        return {k: v for k, v in self.state_dict().items() if ".adapters." not in k}

    def sha256(self, refresh: bool = False) -> str:
        """Content hash of the frozen weights: name-sorted (key, dtype, shape, bytes). Cached; identifies the
        backbone an adapter was trained on, across processes."""
        cached = getattr(self, "_sha256", None)
        if cached is not None and not refresh:
            return cached
        digest = hashlib.sha256()
        for key, tensor in sorted(self.frozen_state_dict().items()):
            t = tensor.detach().to("cpu").contiguous()
            digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        value = digest.hexdigest()
        object.__setattr__(self, "_sha256", value)
        return value

    def freeze(self) -> Backbone:
        """requires_grad False and eval mode for every backbone weight (adapters keep their own flags)."""
        for key, p in self.named_parameters():
            if ".adapters." not in key:
                p.requires_grad_(False)
        return self
