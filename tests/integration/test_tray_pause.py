"""The tray's Pause against a real snitchd (issue 17): an admin's notifier pauses for 15
minutes (snitchd's `silent-allow` with a time limit), a flow no rule covers then passes without
a prompt, and Resume brings the mode from before back; every notifier hears the change."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import MODE_ALERT, Lab
from snitch_notifier.tray import Tray
from tests.integration.notifierlab import registered, wired_notifier

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture
def tray(lab: Lab, monkeypatch: pytest.MonkeyPatch, qtbot: Any) -> Iterator[Tray]:
    lab.expect_log(MODE_ALERT)
    lab.start_daemon()
    window, bridge = wired_notifier(lab, monkeypatch, qtbot)
    t = Tray(bridge, window)
    with registered(bridge, qtbot):
        yield t


def test_pause_for_15_minutes_then_resume(tray: Tray, lab: Lab, qtbot: Any) -> None:
    lab.ctl_json("mode", "silent-deny")
    qtbot.waitUntil(lambda: tray.mode_line.text() == "mode: silent-deny", timeout=10_000)
    pause = next(a for a in tray.pauses if a.text() == "Pause for &15 minutes")
    assert pause.isEnabled()  # root's notifier: an admin's
    pause.trigger()
    qtbot.waitUntil(lambda: tray.mode.get("mode") == "silent-allow", timeout=10_000)
    state = lab.ctl_json("mode")
    assert state["mode"] == "silent-allow" and state["previous"] == "silent-deny"
    assert state["until"] - state["since"] == 900
    assert lab.py("tcp", "192.0.2.2", 80) == "connected"
    assert tray.resume.isEnabled()
    tray.resume.trigger()
    qtbot.waitUntil(lambda: tray.mode.get("mode") == "silent-deny", timeout=10_000)
    assert lab.ctl_json("mode")["mode"] == "silent-deny"
    assert lab.py("tcp", "192.0.2.2", 443) == "timeout"
