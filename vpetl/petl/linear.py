"""Linear probe (PETL_SPEC A.11): only the head is trained, on the frozen backbone's pooled feature.

Tensor names: ``head.weight``, ``head.bias``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vpetl.errors import InvalidRequest
from vpetl.petl.base import Method, MethodConfig
from vpetl.petl.registry import register_method


@dataclass(frozen=True)
class LinearConfig(MethodConfig):
    """The linear probe trains the head, so ``train_head`` must stay true."""

    method: ClassVar[str] = "linear"

    def _validate(self) -> None:
        if not self.train_head:
            raise InvalidRequest("linear: train_head=false would leave nothing to train")


@register_method
class LinearMethod(Method):
    name = "linear"
    config_cls = LinearConfig
    description = "linear probe: the head alone on frozen features"
