"""Schemas shared by the cloud and the edge (torch-free, pydantic only).

``InputSpec`` is the single description of what a backbone eats; the server, the trainer and the edge all
preprocess with it, and it travels in adapter and backbone metadata.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TASK_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def is_valid_task_name(name: str) -> bool:
    """Task names are used in Redis keys and (checked) paths: ``^[a-z0-9][a-z0-9_.-]{0,63}$``, no ``..``."""
    return bool(TASK_NAME_RE.fullmatch(name)) and ".." not in name


class InputSpec(BaseModel):
    """How a clip becomes a model input: frames, sampling, spatial size, normalisation (0–1 pixel scale)."""

    model_config = ConfigDict(frozen=True)

    num_frames: int = Field(16, ge=1, description="frames per clip fed to the backbone")
    sampling: Literal["dense", "uniform"] = Field("dense", description="dense: fixed stride; uniform: TSN segments")
    sampling_rate: int = Field(4, ge=1, description="frame stride for dense sampling")
    size: int = Field(224, ge=8, description="square crop side after short-side resize")
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def resize_short(self) -> int:
        """Short side before the centre crop (the usual 256/224 ratio)."""
        return int(round(self.size * 256 / 224))
