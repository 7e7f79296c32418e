"""The real notifier in the lab, as its app wires it: the popup and the agent bridge, connected
to the lab's private bus and registered with snitchd. Widgets that listen to the bridge (the
tray) are built between `wired_notifier` and `registered`, so they hear the registration."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from conftest import Lab
from snitch_notifier.bridge import AgentBridge
from snitch_notifier.gui import wire
from snitch_notifier.popup import PromptWindow


def lab_bridge(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> AgentBridge:
    """An agent bridge that will connect to the lab's bus (started: `registered`)."""
    assert lab.bus is not None, "start the lab's daemon first"
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", lab.bus.address)
    return AgentBridge(retry_seconds=0.2)


def wired_notifier(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, qtbot: Any
) -> tuple[PromptWindow, AgentBridge]:
    """The popup and its bridge, wired as the app wires them, not yet started."""
    bridge = lab_bridge(lab, monkeypatch)
    window = PromptWindow()
    qtbot.addWidget(window)
    wire(bridge, window)
    return window, bridge


@contextmanager
def registered(bridge: AgentBridge, qtbot: Any) -> Iterator[AgentBridge]:
    """The bridge started and registered with snitchd; stopped on the way out."""
    with qtbot.waitSignal(bridge.registered, timeout=10_000):
        bridge.start()
    try:
        yield bridge
    finally:
        bridge.stop()
