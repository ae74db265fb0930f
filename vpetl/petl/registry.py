"""Methods by name: ``register_method`` (a class decorator), ``get_method``, ``list_methods``, and configs from
names or dicts (``make_config``, ``method_config_from_dict``).

The built-in methods register themselves when their module is imported; the lookups import them on first use, so
``get_method("patt")`` works whichever module was imported first.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from vpetl.errors import InvalidRequest, VpetlError
from vpetl.petl.base import Method, MethodConfig

_BUILTIN_MODULES = (
    "patt", "adaptmlp", "bapat", "lora", "bitfit", "prefix", "vpt", "st_adapter", "dualpath", "linear", "full",
)
_METHODS: dict[str, type[Method]] = {}
_loaded = False


def register_method(cls: type[Method]) -> type[Method]:
    """Register a ``Method`` subclass under ``cls.name`` (lower-case, unique; the config must carry the same name)."""
    name = cls.name
    if not name or name != name.lower() or not name.replace("_", "").isalnum():
        raise ValueError(f"method name {name!r} must be lower-case letters, digits and underscores")
    if name in _METHODS and _METHODS[name] is not cls:
        raise ValueError(f"method {name!r} is already registered")
    if cls.config_cls.method != name:
        raise ValueError(f"method {name!r}: its config class says method {cls.config_cls.method!r}")
    _METHODS[name] = cls
    return cls


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        for module in _BUILTIN_MODULES:
            importlib.import_module(f"vpetl.petl.{module}")
        _loaded = True


def get_method(name: str) -> type[Method]:
    """The registered method class; unknown names raise InvalidRequest listing the known ones."""
    _load_builtins()
    if name not in _METHODS:
        raise InvalidRequest(f"unknown PETL method {name!r}; choose one of: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def list_methods(*, servable_only: bool = False) -> list[str]:
    """Registered method names, sorted; ``servable_only`` drops those never served from the adapter store."""
    _load_builtins()
    return sorted(n for n, cls in _METHODS.items() if cls.servable or not servable_only)


def make_config(method: str, **options: Any) -> MethodConfig:
    """A method's config with its defaults, some options overridden (unknown options raise InvalidRequest)."""
    return get_method(method).config_cls().with_options(**options)


def method_config_from_dict(
    data: Mapping[str, Any], *, error: type[VpetlError] = InvalidRequest
) -> MethodConfig:
    """Strict: ``data["method"]`` picks the config class, which then needs every field and nothing else."""
    if not isinstance(data, Mapping) or not isinstance(data.get("method"), str):
        raise error("a method config needs a string 'method' key")
    try:
        cls = get_method(data["method"]).config_cls
    except InvalidRequest as e:
        raise (e if error is InvalidRequest else error(e.message)) from None
    return cls.from_dict(data, error=error)
