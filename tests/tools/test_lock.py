"""The dependency lock (constraints.txt, tools/lock.py): it pins every requirement of pyproject.toml inside its
range, pins what the locked packages themselves need, and its checks catch a lock that drifted from pyproject."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

# tools/ is a script folder, not a package: load lock.py from its path
_SPEC = importlib.util.spec_from_file_location("vpetl_tools_lock", Path(__file__).parents[2] / "tools" / "lock.py")
assert _SPEC is not None and _SPEC.loader is not None
lock = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = lock
_SPEC.loader.exec_module(lock)
LOCK, PYPROJECT = lock.LOCK, lock.PYPROJECT
dependency_gaps, disagreements, freeze = lock.dependency_gaps, lock.disagreements, lock.freeze
main, parse_lock, project_requirements = lock.main, lock.parse_lock, lock.project_requirements


def test_lock_agrees_with_pyproject() -> None:
    pins = parse_lock(LOCK.read_text())
    requirements = project_requirements(PYPROJECT.read_text())
    assert len(requirements) > 30 and len(pins) >= len(requirements)
    assert disagreements(requirements, pins) == []
    assert main(["check"]) == 0
    assert "+" not in pins["torch"]  # the build comes from TORCH_INDEX, the version from here


def test_lock_pins_what_the_locked_packages_need() -> None:
    """Closed under dependencies (read from the installed distributions' metadata, extras pyproject asks for
    included: uvicorn[standard] needs its websockets, httptools …)."""
    pins = parse_lock(LOCK.read_text())
    assert dependency_gaps(pins, project_requirements(PYPROJECT.read_text())) == []


PYPROJECT_TEXT = """
[project]
name = "vpetl"
dependencies = ["numpy>=2", "winonly>=1; sys_platform == 'win32'"]
[project.optional-dependencies]
cloud = ["torch>=2.4", "uvicorn[standard]>=0.29"]
edge = ["onnxruntime>=1.17"]
dev = ["vpetl[edge]", "newtool>=1"]
"""


def test_a_drifted_lock_is_caught() -> None:
    requirements = project_requirements(PYPROJECT_TEXT)
    good = {"numpy": "2.4.0", "torch": "2.13.0", "uvicorn": "0.54.0", "onnxruntime": "1.31.0", "newtool": "1.0"}
    assert disagreements(requirements, good) == []  # the other platform's requirement and vpetl[edge] ignored
    missing = {k: v for k, v in good.items() if k != "newtool"}
    assert disagreements(requirements, missing) == ["[dev]: newtool>=1 is not in the lock (run `make lock`)"]
    outside = {**good, "numpy": "1.26.4"}
    assert disagreements(requirements, outside) == [
        "dependencies: numpy>=2 but the lock pins numpy==1.26.4 (run `make lock`)"
    ]
    local = {**good, "torch": "2.13.0+cpu"}
    assert disagreements(requirements, local) == [
        "torch==2.13.0+cpu: pin the public version (the index picks the build)"
    ]


@pytest.mark.parametrize("line", ["numpy>=2", "numpy", "-e .", "numpy==2.4.0 --hash=sha256:00"])
def test_a_lock_line_that_is_not_a_pin_is_refused(line: str) -> None:
    with pytest.raises(ValueError, match="not name==version"):
        parse_lock(f"# header\n{line}\n")


def test_freeze_pins_this_venv_without_the_project() -> None:
    pins = parse_lock(freeze(sys.executable))
    assert "vpetl" not in pins and "torch" in pins and "+" not in pins["torch"]
    assert pins["pip"]  # pip itself is locked (make installs the locked pip first)
