"""The tray menu: the way back to the popup, rules, recent connections, and pause."""

from __future__ import annotations

from snitch_notifier.bridge import AgentBridge
from snitch_notifier.shields import Shield
from snitch_notifier.tray import PAUSE_NOT_ADMIN, PAUSE_UNKNOWN, Tray


def _actions(tray: Tray) -> dict[str, object]:
    return {a.text(): a for a in tray.menu.actions() if a.text()}


def _pauses(tray: Tray) -> dict[str, object]:
    return {a.text(): a for a in tray.pause_menu.actions() if a.text()}


def test_pause_entries_are_greyed_until_snitchd_says_this_user_may_switch(popup, qtbot) -> None:
    """Pausing is a machine-wide mode switch, an admin's: greyed with the reason until
    GetMode says yes; the submenu's first line shows the mode in force."""
    bridge = AgentBridge()
    tray = Tray(bridge, popup.window)
    assert list(_actions(tray)) == [
        "Show &prompt",
        "&Waiting prompts…",
        "Pa&use prompts",
        "&Rules…",
        "Recent &connections…",
        "Network &Monitor…",
        "&Quit",
    ]
    pauses = _pauses(tray)
    assert list(pauses) == [
        "mode: unknown",
        "Pause for &15 minutes",
        "Pause for 1 &hour",
        "Pause &until I resume",
        "&Resume",
    ]
    assert not any(a.isEnabled() for a in pauses.values())
    assert tray.pause.toolTip() == PAUSE_UNKNOWN and tray.menu.toolTipsVisible()
    bridge.mode_changed.emit({"mode": "ask", "describe": "ask", "may_switch": False})
    qtbot.waitUntil(lambda: tray.mode_line.text() == "mode: ask", timeout=2000)
    assert pauses["Pause for &15 minutes"].toolTip() == PAUSE_NOT_ADMIN
    assert not pauses["Pause for &15 minutes"].isEnabled()
    bridge.mode_changed.emit({"mode": "ask", "describe": "ask", "may_switch": True})
    qtbot.waitUntil(pauses["Pause for &15 minutes"].isEnabled, timeout=2000)
    assert not pauses["&Resume"].isEnabled()  # nothing to resume from
    # A ModeChanged signal (no may_switch in it) keeps what GetMode said.
    paused = {"mode": "silent-allow", "describe": "silent-allow for 15m more, then ask",
              "until": 1.0, "previous": "ask"}  # fmt: skip
    bridge.mode_changed.emit(paused)
    qtbot.waitUntil(pauses["&Resume"].isEnabled, timeout=2000)
    assert tray.mode_line.text() == "mode: silent-allow for 15m more, then ask"


def test_a_pause_that_cannot_reach_snitchd_says_so(popup, qtbot) -> None:
    bridge = AgentBridge()  # never started: not on any bus
    tray = Tray(bridge, popup.window)
    bridge.mode_changed.emit({"mode": "ask", "describe": "ask", "may_switch": True})
    qtbot.waitUntil(_pauses(tray)["Pause for 1 &hour"].isEnabled, timeout=2000)
    _pauses(tray)["Pause for 1 &hour"].trigger()
    qtbot.waitUntil(lambda: tray.last_alert != "", timeout=2000)
    assert tray.last_alert.startswith("cannot switch mode: the notifier is not connected")


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


def test_the_shield_shows_snitchd_s_state(popup, prompt_factory, qtbot) -> None:
    """Issue 15: with snitchd stopped the icon looked the same. Now: daemon-down until
    registered, asking while prompts wait (also in the waiting list), watching otherwise."""
    bridge = AgentBridge()
    tray = Tray(bridge, popup.window)
    assert tray.state is Shield.DAEMON_DOWN
    bridge.registered.emit(1000)
    qtbot.waitUntil(lambda: tray.state is Shield.WATCHING, timeout=2000)
    popup.window.add_prompt(prompt_factory(1))
    assert tray.state is Shield.ASKING
    popup.window.later()
    assert tray.state is Shield.ASKING and "1 prompt waiting" in tray.icon.toolTip()
    bridge.daemon_gone.emit("snitchd stopped")
    qtbot.waitUntil(lambda: tray.state is Shield.DAEMON_DOWN, timeout=2000)
    assert tray.icon.toolTip().startswith("snitch: snitchd stopped;")
    assert tray.waiting.state.text() == tray.icon.toolTip()


def test_an_expired_prompt_is_announced(popup, prompt_factory) -> None:
    tray = Tray(AgentBridge(), popup.window)
    popup.window.add_prompt(prompt_factory(1))
    popup.clock.now += 30
    popup.window.tick()
    assert tray.last_message == (
        "python3.11: expired: denied by default: updates.example.org (203.0.113.7) port "
        "443/tcp: no answer in time. The waiting list can still make a rule of it."
    )


def test_without_a_tray_the_waiting_list_stays_and_notifications_announce(
    popup, prompt_factory, qtbot
) -> None:
    """No tray (a bare window manager): a small window that stays, with the shield, the
    waiting list and the tray's entries as buttons; closing it only hides it."""
    notified: list[tuple[str, str]] = []
    tray = Tray(
        AgentBridge(),
        popup.window,
        has_tray=False,
        notify=lambda *m: notified.append(m),
        tray_grace=2,
    )
    tray.start()
    assert not tray.waiting.isVisible(), "a panel may still come: no window at once"
    tray._look_for_tray()
    assert not tray.waiting.isVisible()
    tray._look_for_tray()  # offscreen never gets a tray
    assert tray.waiting.isVisible() and not tray.icon.isVisible()
    buttons = [
        tray.waiting.buttons.itemAt(i).widget().text()
        for i in range(tray.waiting.buttons.count())
        if tray.waiting.buttons.itemAt(i).widget() is not None
    ]
    assert buttons[1:] == ["&Rules…", "Recent &connections…", "&Quit", "&Answer…"]
    popup.window.add_prompt(prompt_factory(1))
    popup.clock.now += 30
    popup.window.tick()
    assert [summary for summary, _ in notified] == ["python3.11: expired: denied by default"]
    tray.waiting.close()
    assert not tray.waiting.isVisible()
    tray.open_waiting()
    assert tray.waiting.isVisible()
