"""Choosing between the popup and notifications, and the package's public names."""

from __future__ import annotations

import importlib
import os
import pkgutil

import pytest

import snitch_notifier
from snitch_notifier.app import qt_unavailable
from tests.support.exports import unexported

MODULES = sorted(m.name for m in pkgutil.iter_modules(snitch_notifier.__path__))


def _env(**extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    keep.pop("QT_QPA_PLATFORM", None)
    return keep | extra


def test_no_display_means_notifications() -> None:
    assert qt_unavailable(_env()) == "no display: neither DISPLAY nor WAYLAND_DISPLAY is set"


def test_a_display_qt_cannot_open_means_notifications_with_qts_reason() -> None:
    """Qt aborts the process when its platform plugin fails; the probe runs in a child, so
    we get its complaint instead of dying."""
    reason = qt_unavailable(_env(DISPLAY=":9999", QT_QPA_PLATFORM="xcb"))
    assert reason is not None and reason.startswith("Qt cannot start: qt.qpa")


def test_a_working_platform_means_the_popup() -> None:
    assert qt_unavailable(_env(QT_QPA_PLATFORM="offscreen")) is None


def test_modules_were_found() -> None:
    assert {"app", "bridge", "fallback", "identity", "popup", "tray"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_all_is_honest(name: str) -> None:
    """Every name in `__all__` exists, and every public class or function is in it."""
    module = importlib.import_module(f"snitch_notifier.{name}")
    exported = module.__all__
    assert len(set(exported)) == len(exported)
    assert [n for n in exported if not hasattr(module, n)] == []
    assert unexported(module, exported) == []
