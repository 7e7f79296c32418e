"""Public names: `__all__` is the module's contract (`from snitchd.x import *`, the docs, mypy's
re-export rules), so every name in it must exist and every public class or function must be in it
(as in encode/httpx tests/test_exported_members.py)."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import pytest

import snitch_common
import snitch_lists
import snitchctl
import snitchd
from tests.support.exports import unexported

PACKAGES = (snitch_common, snitchd, snitchctl, snitch_lists)
MODULES = sorted(
    m.name
    for package in PACKAGES
    for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
    if not m.ispkg
)


def _import(name: str) -> ModuleType:
    return importlib.import_module(name)


def test_modules_were_found() -> None:
    """Guard against an empty parametrization silently passing."""
    assert {"snitchd.decide", "snitch_common.rules", "snitchd.logwriter.child"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_names_in_all_exist(name: str) -> None:
    """A name in `__all__` that the module does not define breaks `import *` at run time."""
    module = _import(name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        pytest.skip(f"{name} defines no __all__")
    assert len(set(exported)) == len(exported), "duplicate names in __all__"
    missing = [n for n in exported if not hasattr(module, n)]
    assert missing == []


@pytest.mark.parametrize("name", MODULES)
def test_public_classes_and_functions_are_in_all(name: str) -> None:
    """A public top-level class or function left out of `__all__` is either private (then it
    needs a leading underscore) or an omission other modules already depend on."""
    module = _import(name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        pytest.skip(f"{name} defines no __all__")
    assert unexported(module, exported) == []
