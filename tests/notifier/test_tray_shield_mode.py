"""The shield shows the mode (issue 17): *paused* while snitchd is in `silent-allow` (a pause
from the tray, `snitchctl mode silent-allow`, or a profile's mode), so a firewall that lets
everything through never looks like one that watches."""

from __future__ import annotations

from pathlib import Path

from snitch_notifier.bridge import AgentBridge
from snitch_notifier.shields import Shield
from snitch_notifier.tray import Tray

PAUSED = {
    "mode": "silent-allow",
    "describe": "silent-allow for 15m more, then ask",
    "until": 1.0,
    "previous": "ask",
}


def test_silent_allow_shows_the_paused_shield_and_resuming_ends_it(
    popup, qtbot, tmp_path: Path
) -> None:
    bridge = AgentBridge()
    tray = Tray(bridge, popup.window)
    bridge.registered.emit(1000)
    bridge.mode_changed.emit({"mode": "ask", "describe": "ask", "may_switch": True})
    qtbot.waitUntil(lambda: tray.mode_line.text() == "mode: ask", timeout=2000)
    assert tray.state is Shield.WATCHING
    bridge.mode_changed.emit(PAUSED)  # the ModeChanged signal of a pause
    qtbot.waitUntil(lambda: tray.state is Shield.PAUSED, timeout=2000)
    assert tray.icon.toolTip() == (
        "snitch: asking for uid 1000; paused (silent-allow for 15m more, then ask); no prompts"
    )
    assert tray.waiting.state.text() == tray.icon.toolTip()  # the no-tray window says it too
    assert tray.waiting.grab().save(str(tmp_path / "paused-window.png"))
    bridge.mode_changed.emit({"mode": "ask", "describe": "ask", "was": "silent-allow"})
    qtbot.waitUntil(lambda: tray.state is Shield.WATCHING, timeout=2000)
    assert "paused" not in tray.icon.toolTip()


def test_paused_beats_asking_and_daemon_down_beats_paused(popup, prompt_factory, qtbot) -> None:
    """Prompts left in the waiting list do not hide that everything gets out; a snitchd that
    stopped is the state above all (its mode no longer applies to anything)."""
    bridge = AgentBridge()
    tray = Tray(bridge, popup.window)
    bridge.registered.emit(1000)
    popup.window.add_prompt(prompt_factory(1))
    qtbot.waitUntil(lambda: tray.state is Shield.ASKING, timeout=2000)
    bridge.mode_changed.emit(PAUSED)
    qtbot.waitUntil(lambda: tray.state is Shield.PAUSED, timeout=2000)
    assert tray.icon.toolTip().endswith("; 1 prompt waiting")
    bridge.daemon_gone.emit("snitchd stopped")
    qtbot.waitUntil(lambda: tray.state is Shield.DAEMON_DOWN, timeout=2000)
    assert tray.icon.toolTip() == "snitch: snitchd stopped; 1 prompt waiting"


def test_the_other_modes_are_not_paused(popup, qtbot) -> None:
    """silent-deny and learn ask no one either, but only silent-allow is a pause (the tray's
    pause entries switch to it); the submenu's mode line names the others."""
    bridge = AgentBridge()
    tray = Tray(bridge, popup.window)
    bridge.registered.emit(1000)
    for mode in ("silent-deny", "learn", "ask"):
        bridge.mode_changed.emit({"mode": mode, "describe": mode})
        qtbot.waitUntil(lambda m=mode: tray.mode_line.text() == f"mode: {m}", timeout=2000)
        assert tray.state is Shield.WATCHING, mode
