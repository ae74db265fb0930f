"""What every PETL method shares: the config base class, the method base class and the block-adapter base class.

A method is three small things (STYLE.md §1, PEFT's plugin shape without its enum bookkeeping):

- a frozen ``MethodConfig`` dataclass: hyper-parameters with PETL_SPEC Part A's defaults, validated in
  ``__post_init__``, with ``to_dict``/``from_dict`` (strict: missing or unknown keys fail) because configs travel
  inside adapter files;
- a ``Method`` subclass, registered by name, that says which backbones it supports and what it builds on one
  (block adapters, backbone parameters to unfreeze, the feature the head reads);
- ``MethodAdapter`` modules attached to blocks through the hooks of :mod:`vpetl.backbones.hooks`; their
  ``named_parameters()`` are the stable tensor names after ``blocks.{i}.{component}.``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from vpetl.backbones.base import Backbone
from vpetl.backbones.hooks import BlockAdapter
from vpetl.errors import InvalidRequest, UnsupportedMethod, VpetlError

Tensor = torch.Tensor


# ------------------------------------------------------------------------------------------------- validation
def _fail(cfg: MethodConfig, name: str, what: str, value: Any) -> InvalidRequest:
    return InvalidRequest(f"{cfg.method}: option {name!r} must be {what}, got {value!r}")


def check_bool(cfg: MethodConfig, name: str) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, bool):
        raise _fail(cfg, name, "true or false", value)


def check_int(cfg: MethodConfig, name: str, minimum: int = 1, *, optional: bool = False) -> None:
    value = getattr(cfg, name)
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(cfg, name, f"an integer ≥ {minimum}" + (" or null" if optional else ""), value)


def check_float(cfg: MethodConfig, name: str, *, positive: bool = False, optional: bool = False) -> None:
    """Accept ints too (JSON has one number type) and store a float, so to_dict round-trips exactly."""
    value = getattr(cfg, name)
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or abs(value) == float("inf"):
        raise _fail(cfg, name, "a finite number", value)
    if positive and value <= 0:
        raise _fail(cfg, name, "a positive number", value)
    object.__setattr__(cfg, name, float(value))


def check_choice(cfg: MethodConfig, name: str, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    value = getattr(cfg, name)
    if value not in choices:
        raise _fail(cfg, name, "one of " + ", ".join(repr(c) for c in choices), value)


def check_subset(cfg: MethodConfig, name: str, universe: tuple[str, ...]) -> None:
    """A non-empty subset of ``universe`` given as a sequence or a comma-separated string; stored as a tuple in
    ``universe`` order, because the order fixes the tensor layout (PATT's up projection: slot j = channels j·C…)."""
    value = getattr(cfg, name)
    items = [s.strip() for s in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(s, str) for s in items):
        raise _fail(cfg, name, f"a non-empty subset of {list(universe)}", value)
    if not items or len(set(items)) != len(items) or not set(items) <= set(universe):
        raise _fail(cfg, name, f"a non-empty subset of {list(universe)} without repeats", value)
    object.__setattr__(cfg, name, tuple(s for s in universe if s in items))


# ------------------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's hyper-parameters.

    Attributes:
        train_head: train the task head (default). False keeps the head at its seeded random init and frozen; it is
            still part of the adapter state (the paper's "without FC" rows).
    """

    method: ClassVar[str] = ""
    #: the option that sets the adapter's width (``--bottleneck`` in the CLI), if any.
    size_field: ClassVar[str | None] = None

    train_head: bool = True

    def __post_init__(self) -> None:
        check_bool(self, "train_head")
        self._validate()

    def _validate(self) -> None:
        """Subclasses check (and normalise) their own fields here."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"method": name, <every field>}``; tuples become lists."""
        out: dict[str, Any] = {"method": self.method}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, error: type[VpetlError] = InvalidRequest) -> MethodConfig:
        """Strict inverse of :meth:`to_dict`: every field must be present and nothing else (``method`` optional).

        Args:
            data: the dict, e.g. from an adapter file's metadata.
            error: the error class raised on a bad dict (an adapter loader passes ``IncompatibleAdapter``).
        """
        if not isinstance(data, Mapping):
            raise error(f"{cls.method} config must be an object, got {type(data).__name__}")
        values = dict(data)
        named = values.pop("method", cls.method)
        if named != cls.method:
            raise error(f"config is for method {named!r}, not {cls.method!r}")
        names = cls.field_names()
        missing = [n for n in names if n not in values]
        unknown = sorted(set(values) - set(names))
        if missing or unknown:
            raise error(
                f"{cls.method} config: missing key(s) {missing}, unknown key(s) {unknown}; expected exactly {names}"
            )
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        try:
            return cls(**values)
        except VpetlError as e:
            if isinstance(e, error):
                raise
            raise error(e.message) from e

    def with_options(self, **options: Any) -> MethodConfig:
        """A copy with some fields changed (validated); unknown names raise InvalidRequest listing the valid ones."""
        unknown = sorted(set(options) - set(self.field_names()))
        if unknown:
            raise InvalidRequest(f"{self.method} has no option(s) {unknown}; valid: {self.field_names()}")
        return dataclasses.replace(self, **options)


# ----------------------------------------------------------------------------------------------------- adapters
class MethodAdapter(BlockAdapter):
    """A trainable block adapter. ``component`` is its key in ``block.adapters`` and in the stable tensor names
    (``blocks.{i}.{component}.{param}``); its own ``named_parameters()`` supply ``{param}``."""

    component: str = ""

    def weights(self) -> dict[str, Tensor]:
        """This adapter's parameters under their stable suffixes, as the functions in ``functional`` take them."""
        return dict(self.named_parameters())


# ------------------------------------------------------------------------------------------------------- method
class Method:
    """What a method does to a backbone. Subclasses set the class attributes and override what they need.

    Attributes:
        name: registry name (lower-case); also the ``method`` key of its config.
        config_cls: its ``MethodConfig`` subclass.
        description: one line for listings.
        servable: False for methods whose result is a whole model (full fine-tuning), never an adapter.
        families: backbone families it supports (``video_vit``, ``swin3d``, ``image_vit``); None = all.
        default_backbone: the backbone the method's paper ran on, where vpetl has it (listed by ``vpetl inspect``).
        unsupported_reason: why the other families are refused.
        instead: what to use on a refused backbone.
    """

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[MethodConfig]] = MethodConfig
    description: ClassVar[str] = ""
    servable: ClassVar[bool] = True
    families: ClassVar[tuple[str, ...] | None] = None
    default_backbone: ClassVar[str | None] = None
    unsupported_reason: ClassVar[str] = ""
    instead: ClassVar[str] = ""

    def __init__(self, config: MethodConfig) -> None:
        if not isinstance(config, self.config_cls):
            raise InvalidRequest(
                f"method {self.name!r} needs a {self.config_cls.__name__}, got {type(config).__name__}"
            )
        self.config = config

    def check_backbone(self, backbone: Backbone) -> None:
        """Raise UnsupportedMethod (naming the method, the backbone and what to use instead) if not meaningful."""
        if self.families is not None and backbone.family not in self.families:
            raise UnsupportedMethod(
                f"method {self.name!r} is not supported on backbone {backbone.name!r} ({backbone.family}): "
                f"{self.unsupported_reason}; use {self.instead} instead"
            )

    def build_block_adapters(self, backbone: Backbone) -> list[tuple[int, MethodAdapter]]:
        """(global block index, adapter) pairs to attach; the adapter's ``component`` names it."""
        return []

    def trainable_backbone_parameters(self, backbone: Backbone) -> list[str]:
        """Backbone parameter paths the method trains in place (BitFit's biases, full fine-tuning's everything)."""
        return []

    def feature_dim(self, backbone: Backbone) -> int:
        """Width of the feature the head reads."""
        return backbone.num_features

    def features(self, backbone: Backbone, x: Tensor) -> Tensor:
        """(B, 3, T, H, W) -> (B, feature_dim) pooled features, adapters included."""
        return backbone(x)
