"""The interop test dependencies as pinned: the installed ``peft`` is the one pyproject's dev extra pins, the
installed ``transformers`` satisfies both our range and every requirement ``peft`` declares."""

from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"


def _dev_requirements() -> dict[str, Requirement]:
    """The ``dev = [...]`` extra's requirement strings (a regex, not tomllib: that is Python ≥ 3.11 only)."""
    block = re.search(r"^dev = \[(.*?)^\]", PYPROJECT.read_text(), re.S | re.M)
    assert block is not None, "no dev extra in pyproject.toml"
    lines = re.findall(r'^\s*"([^"]+)"', block.group(1), re.M)
    return {(r := Requirement(line)).name: r for line in lines}


def test_installed_peft_and_transformers_are_the_pinned_ones() -> None:
    dev = _dev_requirements()
    assert str(dev["peft"].specifier).startswith("=="), "peft must be pinned exactly"
    for name in ("peft", "transformers"):
        assert Version(md.version(name)) in dev[name].specifier, (name, md.version(name), dev[name].specifier)


def test_peft_requirements_are_met_by_what_is_installed() -> None:
    for line in md.requires("peft") or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an optional extra of peft
        assert Version(md.version(req.name)) in req.specifier, (req.name, md.version(req.name), str(req))
