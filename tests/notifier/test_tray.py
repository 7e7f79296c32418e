"""The tray menu: the way back to the popup, rules, recent connections, and an honest pause."""

from __future__ import annotations

from snitch_notifier.bridge import AgentBridge
from snitch_notifier.tray import PAUSE_UNSUPPORTED, Tray


def _actions(tray: Tray) -> dict[str, object]:
    return {a.text(): a for a in tray.menu.actions() if a.text()}


def test_pause_is_shown_disabled_and_says_why(popup) -> None:
    """snitchd has no pause yet: the entry is there, greyed, with the reason as tooltip."""
    tray = Tray(AgentBridge(), popup.window)
    actions = _actions(tray)
    assert list(actions) == [
        "Show &prompt",
        "Pa&use prompts",
        "&Rules…",
        "Recent &connections…",
        "Network &Monitor…",
        "&Quit",
    ]
    pause = actions["Pa&use prompts"]
    assert not pause.isEnabled() and pause.toolTip() == PAUSE_UNSUPPORTED
    assert tray.menu.toolTipsVisible()


def test_the_tooltip_counts_waiting_prompts(popup, prompt_factory) -> None:
    tray = Tray(AgentBridge(), popup.window)
    assert tray.icon.toolTip() == "snitch: connecting to snitchd…; no prompts"
    assert not _actions(tray)["Show &prompt"].isEnabled()
    popup.window.add_prompt(prompt_factory(1))
    popup.window.add_prompt(prompt_factory(2))
    tray.update_state()
    assert tray.icon.toolTip() == "snitch: connecting to snitchd…; 2 prompts waiting"
    assert _actions(tray)["Show &prompt"].isEnabled()
    popup.window.close()
    _actions(tray)["Show &prompt"].trigger()
    assert popup.window.isVisible()


def test_the_tooltip_says_when_snitchd_cannot_be_reached(popup, qtbot) -> None:
    bridge = AgentBridge()
    tray = Tray(bridge, popup.window)
    bridge.failed.emit("register", "snitchd is not running or not on this bus")
    qtbot.waitUntil(lambda: "not running" in tray.icon.toolTip(), timeout=2000)
    bridge.failed.emit("rules", "not authorized")  # a window's business, not the tray's
    qtbot.wait(50)
    assert tray.icon.toolTip() == "snitch: snitchd is not running or not on this bus; no prompts"


def test_alerts_from_snitchd_become_tray_messages(popup, qtbot) -> None:
    bridge = AgentBridge()
    tray = Tray(bridge, popup.window)
    bridge.alert_arrived.emit(
        {"kind": "new-app", "message": "/usr/bin/curl connects for the first time, to 192.0.2.2"}
    )
    qtbot.waitUntil(lambda: tray.last_alert != "", timeout=2000)
    assert tray.last_alert == "/usr/bin/curl connects for the first time, to 192.0.2.2"
