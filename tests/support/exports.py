"""What `__all__` leaves out: the check behind the unit and notifier export tests (every public
class or function a module defines is in its `__all__`)."""

from __future__ import annotations

import inspect
from types import ModuleType

__all__ = ["unexported"]


def unexported(module: ModuleType, exported: list[str]) -> list[str]:
    """The public top-level classes and functions `module` defines (not imports) that are not in
    `exported`, sorted."""
    public = [
        n
        for n, obj in vars(module).items()
        if not n.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and getattr(obj, "__module__", None) == module.__name__
    ]
    return sorted(set(public) - set(exported))
