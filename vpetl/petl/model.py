"""The trainable model: a frozen backbone, one method's adapters attached through the block hooks, and a head.

``create_model(backbone, method_config, num_classes)`` is the single entry point for training, evaluation and
parameter counting. The model's state (what an adapter file stores) is addressed by stable names that do not depend
on module paths:

- ``blocks.{i}.{component}.{param}`` for block adapters, ``i`` the global index in ``backbone.adaptable_blocks()``
  (``blocks.3.patt.down.weight``, ``blocks.3.adaptmlp.up.bias``, ``blocks.0.lora.q.A``);
- ``backbone.<parameter path>`` for backbone parameters a method trains in place (BitFit's biases, full tuning);
- ``head.weight`` and ``head.bias``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from vpetl.backbones.base import Backbone
from vpetl.backbones.registry import create_backbone
from vpetl.errors import IncompatibleAdapter, InvalidRequest
from vpetl.petl.base import Method, MethodAdapter, MethodConfig
from vpetl.petl.registry import get_method, make_config, method_config_from_dict

Tensor = torch.Tensor


def as_method_config(method_config: MethodConfig | str | Mapping[str, Any]) -> MethodConfig:
    """A config object from a config, a method name (its defaults) or a full dict (strict ``from_dict``)."""
    if isinstance(method_config, MethodConfig):
        return method_config
    if isinstance(method_config, str):
        return make_config(method_config)
    if isinstance(method_config, Mapping):
        return method_config_from_dict(method_config)
    raise InvalidRequest(f"method_config must be a MethodConfig, a method name or a dict, got {type(method_config)}")


class PetlModel(nn.Module):
    """Frozen backbone + one PETL method + a Linear head. Build it with :func:`create_model`.

    Only the method's parameters and the head (when ``train_head``) require grad; ``train()`` keeps the backbone
    in eval mode (only the attached adapters follow the mode).

    Attributes:
        backbone: the backbone the adapters are attached to.
        head: Linear(feature_dim, num_classes), PyTorch default init from ``seed``.
        method: the method object; ``config`` its config.
    """

    def __init__(self, backbone: Backbone, method: Method, num_classes: int, *, seed: int = 0) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise InvalidRequest(f"num_classes must be a positive integer, got {num_classes!r}")
        method.check_backbone(backbone)
        blocks = backbone.adaptable_blocks()
        if any(len(block.adapters) for block in blocks):
            raise InvalidRequest(
                f"backbone {backbone.name!r} already carries adapters (another PetlModel shares it): pass a fresh "
                "backbone, or call remove_adapters() on the other model first"
            )
        self.method, self.config, self.num_classes = method, method.config, num_classes
        ref = next(backbone.parameters())
        with torch.random.fork_rng(devices=[]):  # the same seed gives the same init on every device and process
            torch.manual_seed(seed)
            head = nn.Linear(method.feature_dim(backbone), num_classes)  # built first: same head for every method
            attached = method.build_block_adapters(backbone)
        for p in backbone.parameters():
            p.requires_grad_(False)
        self._attached: list[tuple[int, MethodAdapter]] = []
        for index, adapter in attached:
            if adapter.component in blocks[index].adapters:
                raise InvalidRequest(f"{method.name}: two adapters named {adapter.component!r} on block {index}")
            blocks[index].adapters[adapter.component] = adapter.to(ref.device, ref.dtype)
            self._attached.append((index, adapter))
        self.backbone = backbone
        self.head = head.to(ref.device, ref.dtype)
        self.head.requires_grad_(method.config.train_head)

        # The state under stable names, in a fixed order: blocks by index, backbone parameters, head.
        self._state: dict[str, nn.Parameter] = {}
        for index, adapter in sorted(self._attached, key=lambda item: item[0]):
            for name, p in adapter.weights().items():
                self._state[f"blocks.{index}.{adapter.component}.{name}"] = p  # type: ignore[assignment]
        for name in method.trainable_backbone_parameters(backbone):
            p = backbone.get_parameter(name)
            p.requires_grad_(True)
            self._state[f"backbone.{name}"] = p
        self._state["head.weight"], self._state["head.bias"] = self.head.weight, self.head.bias
        self.train()

    # ------------------------------------------------------------------------------------------------ forward
    def features(self, x: Tensor) -> Tensor:
        """(B, 3, T, H, W) -> (B, feature_dim) pooled features with the adapters applied."""
        return self.method.features(self.backbone, x)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, T, H, W) -> (B, num_classes) logits."""
        return self.head(self.features(x))

    def train(self, mode: bool = True) -> PetlModel:
        """Set train/eval mode on the head and adapters; the frozen backbone always stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        for _, adapter in self._attached:
            adapter.train(mode)
        return self

    # -------------------------------------------------------------------------------------------------- state
    def stable_named_parameters(self) -> dict[str, nn.Parameter]:
        """The state's Parameter objects under their stable names (for optimiser groups)."""
        return dict(self._state)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimiser updates: the method's parameters, plus the head when ``train_head``."""
        return [p for p in self._state.values() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """The adapter state under stable names (detached; shares storage with the model — clone to keep a copy).

        Includes the head even when ``train_head`` is false (it is part of the artifact).
        """
        return {name: p.detach() for name, p in self._state.items()}

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every stable name and its shape: what an adapter file for this (method, backbone, classes) must hold."""
        return {name: tuple(p.shape) for name, p in self._state.items()}

    def load_trainable_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> dict[str, list[str]]:
        """Copy tensors into the state by stable name.

        Args:
            state: name -> tensor (or array-like).
            strict: missing or unexpected names are an error (else they are skipped and reported).

        Returns:
            ``{"missing": [...], "unexpected": [...]}`` (both empty when strict).

        Raises:
            IncompatibleAdapter: naming the missing, unexpected and mis-shaped tensors; nothing is copied then.
        """
        missing = [n for n in self._state if n not in state]
        unexpected = sorted(n for n in state if n not in self._state)
        # Arrays (e.g. numpy from a safetensors file, possibly read-only) are copied into tensors first.
        tensors = {n: v if isinstance(v := state[n], Tensor) else torch.tensor(v) for n in self._state if n in state}
        misshaped = [
            f"{n}: expected {tuple(self._state[n].shape)}, got {tuple(t.shape)}"
            for n, t in tensors.items()
            if tuple(t.shape) != tuple(self._state[n].shape)
        ]
        problems = []
        if strict and missing:
            problems.append(f"missing {missing}")
        if strict and unexpected:
            problems.append(f"unexpected {unexpected}")
        if misshaped:
            problems.append(f"mis-shaped [{'; '.join(misshaped)}]")
        if problems:
            raise IncompatibleAdapter(
                f"adapter state does not fit {self.config.method} on {self.backbone.name} "
                f"({self.num_classes} classes): " + "; ".join(problems)
            )
        with torch.no_grad():
            for n, t in tensors.items():
                self._state[n].copy_(t.to(self._state[n].device, self._state[n].dtype))
        return {"missing": missing, "unexpected": unexpected}

    # ------------------------------------------------------------------------------------------------- counts
    def parameter_counts(self) -> dict[str, Any]:
        """Trainable parameters split by component and as a percentage of the backbone.

        Returns:
            ``method``; ``adapter`` (the method's parameters, backbone ones trained in place included); ``head``;
            ``head_trained``; ``trainable`` (adapter + head when trained: what the optimiser updates); ``state``
            (adapter + head: what an adapter file stores); ``backbone`` (the backbone's own parameters);
            ``percent_of_backbone`` (trainable / backbone · 100); ``components`` (per adapter component, e.g.
            ``patt`` and ``adaptmlp`` for BAPAT, ``backbone`` for in-place parameters, and ``head``).
        """
        components: dict[str, int] = {}
        for name, p in self._state.items():
            key = name.split(".")[2] if name.startswith("blocks.") else name.split(".")[0]
            components[key] = components.get(key, 0) + p.numel()
        head = components.get("head", 0)
        adapter = sum(v for k, v in components.items() if k != "head")
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        backbone = sum(p.numel() for n, p in self.backbone.named_parameters() if ".adapters." not in n)
        return {
            "method": self.config.method,
            "adapter": adapter,
            "head": head,
            "head_trained": self.config.train_head,
            "trainable": trainable,
            "state": adapter + head,
            "backbone": backbone,
            "percent_of_backbone": 100.0 * trainable / backbone,
            "components": components,
        }

    def remove_adapters(self) -> Backbone:
        """Detach this model's adapters from the backbone's blocks and return the backbone (the model is then
        unusable). For callers that share one backbone between models in turn (``share_backbone=True``)."""
        blocks = self.backbone.adaptable_blocks()
        for index, adapter in self._attached:
            held = blocks[index].adapters
            if adapter.component in held and held[adapter.component] is adapter:
                del blocks[index].adapters[adapter.component]
        self._attached = []
        return self.backbone


def create_model(
    backbone: Backbone | str,
    method_config: MethodConfig | str | Mapping[str, Any],
    num_classes: int,
    *,
    seed: int = 0,
    share_backbone: bool = False,
) -> PetlModel:
    """Build a frozen backbone with one PETL method and a head.

    Args:
        backbone: a registered backbone name (built seeded, as ``create_backbone``) or a Backbone.
        method_config: a MethodConfig, a method name (its defaults), or a full config dict (strict).
        num_classes: K, the head's output width.
        seed: seeds the adapter and head init (same seed, same init; the backbone's weights are never touched).
        share_backbone: attach to the given Backbone object itself instead of a private deep copy (the copy
            drops adapters other models attached to the original). Saves memory when models use one backbone in
            turn; refused for methods that train backbone weights in place.

    Returns:
        The model, in train mode with the backbone in eval mode.

    Raises:
        UnsupportedMethod: the method is not meaningful on this backbone (the message says what to use instead).
        InvalidRequest: an unknown method or a bad option.
    """
    config = as_method_config(method_config)
    method = get_method(config.method)(config)
    if isinstance(backbone, str):
        backbone = create_backbone(backbone)
    elif not isinstance(backbone, Backbone):
        raise InvalidRequest(f"backbone must be a Backbone or a backbone name, got {type(backbone).__name__}")
    elif not share_backbone:
        method.check_backbone(backbone)  # refuse before paying for the copy
        backbone = copy.deepcopy(backbone)
        for block in backbone.adaptable_blocks():
            block.adapters.clear()  # the copy is private: adapters another model attached to the original go
    elif method.trainable_backbone_parameters(backbone):
        raise InvalidRequest(f"{config.method} trains backbone weights in place: it cannot share the backbone")
    return PetlModel(backbone, method, num_classes, seed=seed)
