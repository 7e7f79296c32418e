"""The tray icon: snitchd's state at a glance, and the way back to the popup, the waiting
list, the rules and the recent connections.

The shield says the state (issue 15): *daemon-down* while snitchd is not on the bus or has not
taken us as its agent, *paused* while snitchd's mode is `silent-allow` (issue 17: everything no
rule covers gets out, nobody is asked; it beats *asking*, since what waits then is only the
waiting list's leftovers, and a firewall that lets everything through must not look like one
that watches), *asking* while prompts wait (in the popup or the waiting list), *watching*
otherwise. Expired prompts and prompts that moved to the waiting list by
themselves are announced (a tray balloon, or a desktop notification where there is no tray),
so nothing is decided unseen.

Where the desktop has no tray (GNOME without an AppIndicator extension, a bare window
manager), the waiting list is shown instead as a small window that stays: the same shield and
state, the list, and buttons for the rules, the recent connections and quitting (the buttons
are there with a tray too). It waits `TRAY_GRACE` seconds first: a panel may start after us.

Pause is snitchd's `silent-allow` mode with a time limit (issue 17): "for 15 minutes", "for 1
hour" or "until I resume"; Resume returns to the mode from before. Only an admin may switch
modes, so for anyone else the entries are greyed with the reason as tooltip; the submenu's
first line shows the mode in force, kept current by snitchd's ModeChanged signal. The tooltip
counts waiting prompts, so a hidden popup is never forgotten.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from PySide6.QtCore import QObject, Qt, QTimer
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QApplication, QMenu, QPushButton, QSystemTrayIcon

from snitch_common.bus import PromptView
from snitch_notifier.bridge import AgentBridge
from snitch_notifier.icons import snitch_icon
from snitch_notifier.lists import ConnectionsWindow, RulesWindow
from snitch_notifier.monitor import open_monitor
from snitch_notifier.pending import Expired
from snitch_notifier.popup import PromptWindow
from snitch_notifier.shields import Shield
from snitch_notifier.waiting import WaitingWindow

__all__ = ["PAUSES", "PAUSE_NOT_ADMIN", "PAUSE_UNKNOWN", "TRAY_GRACE", "Tray", "quit_now"]

TRAY_GRACE = 10  # seconds a notifier without a tray waits for one before showing its window

PAUSE_NOT_ADMIN = (
    "only an admin (root or the admin group) may pause snitch: it pauses prompts for the "
    "whole machine"
)
PAUSE_UNKNOWN = "snitchd has not said yet whether you may pause it"
# The tray's pauses: label and seconds (None: until resumed); all are `silent-allow`.
PAUSES: tuple[tuple[str, float | None], ...] = (
    ("Pause for &15 minutes", 900.0),
    ("Pause for 1 &hour", 3600.0),
    ("Pause &until I resume", None),
)

log = logging.getLogger(__name__)

_QUEUED = Qt.ConnectionType.QueuedConnection


def quit_now() -> None:
    """Leave at once: `QApplication.quit` would first ask each window to close, and the popup
    and the waiting list refuse (they hide instead), which would cancel the quit."""
    QApplication.exit(0)


class Tray(QObject):
    def __init__(
        self,
        bridge: AgentBridge,
        window: PromptWindow,
        has_tray: bool = True,
        notify: Callable[[str, str], None] | None = None,
        tray_grace: int = TRAY_GRACE,
    ) -> None:
        """`notify(summary, body)` announces where there is no tray (desktop notifications);
        `tray_grace`: seconds to wait for a tray to appear before showing the window."""
        super().__init__()
        self.window = window
        self.has_tray = has_tray
        self._notify = notify
        self._grace = tray_grace
        self._looked = 0
        self._look = QTimer(self)
        self._look.setInterval(1000)
        self._look.timeout.connect(self._look_for_tray)
        self.rules = RulesWindow(bridge)
        self.connections = ConnectionsWindow(bridge)
        self.waiting = WaitingWindow(window)
        self._connected = "connecting to snitchd…"
        self._up = False
        self.state = Shield.DAEMON_DOWN
        self.icon = QSystemTrayIcon(snitch_icon(self.state), self)
        self.menu = QMenu()
        self.menu.setToolTipsVisible(True)
        self.show_prompt = self.menu.addAction("Show &prompt", self.show_window)
        self.show_waiting = self.menu.addAction("&Waiting prompts…", self.open_waiting)
        self.menu.addSeparator()
        self.bridge = bridge
        self._add_pause_menu()
        self.menu.addAction("&Rules…", lambda: self._open(self.rules))
        self.menu.addAction("Recent &connections…", lambda: self._open(self.connections))
        self.menu.addAction("Network &Monitor…", open_monitor)
        self.menu.addSeparator()
        self.menu.addAction("&Quit", quit_now)
        self.icon.setContextMenu(self.menu)
        self.icon.activated.connect(self._activated)
        self._standalone_buttons()
        bridge.registered.connect(self._registered, _QUEUED)
        bridge.daemon_gone.connect(self._not_connected, _QUEUED)
        bridge.failed.connect(self._failed, _QUEUED)
        bridge.alert_arrived.connect(self.show_alert, _QUEUED)
        window.changed.connect(self.update_state)
        window.expired.connect(self._expired)
        window.set_aside.connect(self._set_aside)
        self.last_alert = ""
        self.last_message = ""
        self.update_state()

    def start(self) -> None:
        """Show the icon, or the small window where there is no tray. A session's panel may
        start after the notifier: the window waits `tray_grace` seconds for a tray first."""
        if self.has_tray:
            self.icon.show()
        elif self._grace <= 0:
            self.waiting.show()
        else:
            self._look.start()

    def _look_for_tray(self) -> None:
        self._looked += 1
        if QSystemTrayIcon.isSystemTrayAvailable():
            self._look.stop()
            self.has_tray = True
            self.icon.show()
            log.info("a system tray appeared: the shield is there")
        elif self._looked >= self._grace:
            self._look.stop()
            log.info("still no system tray: the waiting list stays as a window")
            self.waiting.show()

    def update_state(self, *_: object) -> None:
        p = self.window.pending
        count = len(p.queue) + len(p.aside)
        self.show_prompt.setEnabled(count > 0)
        self.show_waiting.setText(f"&Waiting prompts ({count})…" if count else "&Waiting prompts…")
        waiting = f"{count} prompt{'s' if count != 1 else ''} waiting" if count else "no prompts"
        state = Shield.ASKING if count else Shield.WATCHING
        text = f"snitch: {self._connected}; {waiting}"
        if self.paused:
            state = Shield.PAUSED
            mode = self.mode.get("describe") or self.mode.get("mode")
            text = f"snitch: {self._connected}; paused ({mode}); {waiting}"
        if not self._up:
            state = Shield.DAEMON_DOWN
            text = f"snitch: {self._connected}; {waiting}"
        if state is not self.state:
            self.state = state
            self.icon.setIcon(snitch_icon(state))
        self.icon.setToolTip(text)
        self.waiting.set_state(state, text)

    def show_alert(self, alert: dict[str, object]) -> None:
        """snitchd's alerts (an app's first connection, a changed executable, rules edited
        behind its back) as a tray balloon: seen, but never in the way of typing."""
        self.last_alert = str(alert.get("message", ""))
        self._announce("snitch alert", self.last_alert)

    def _announce(self, summary: str, body: str) -> None:
        self.last_message = f"{summary}: {body}"
        if self.has_tray:
            self.icon.showMessage(summary, body, QSystemTrayIcon.MessageIcon.Warning, 10_000)
        elif self._notify is not None:
            self._notify(summary, body)

    def _expired(self, gone: Expired) -> None:
        app = self.window.app_name(gone.prompt.exe)
        self._announce(
            f"{app}: {gone.label}",
            f"{gone.prompt.destination}: no answer in time. "
            "The waiting list can still make a rule of it.",
        )

    def _set_aside(self, prompt: PromptView) -> None:
        app = self.window.app_name(prompt.exe)
        self._announce(
            f"{app} waits for you",
            f"{prompt.destination} is in the waiting list: "
            f"{prompt.default_action} if not answered in time.",
        )

    def _registered(self, uid: int) -> None:
        self._up = True
        self._connected = f"asking for uid {uid}"
        self.update_state()

    def _not_connected(self, reason: str) -> None:
        self._up = False
        self._connected = reason
        self.update_state()

    def _failed(self, what: str, message: str) -> None:
        if what in ("connect", "register"):
            self._not_connected(message)
        elif what == "mode":
            self.show_alert({"message": f"cannot switch mode: {message}"})

    def _add_pause_menu(self) -> None:
        """Pause: snitchd's `silent-allow` mode for a while; the first line is the mode."""
        self.pause_menu = QMenu("Pa&use prompts", self.menu)
        self.pause_menu.setToolTipsVisible(True)
        self.mode_line = self.pause_menu.addAction("mode: unknown")
        self.mode_line.setEnabled(False)
        self.pause_menu.addSeparator()
        self.pauses: list[QAction] = []
        for label, seconds in PAUSES:
            action = self.pause_menu.addAction(label)
            action.triggered.connect(lambda _=False, s=seconds: self._pause(s))
            self.pauses.append(action)
        self.resume = self.pause_menu.addAction("&Resume", self._resume)
        self.pause = self.menu.addMenu(self.pause_menu)
        self.pause.setToolTip(PAUSE_UNKNOWN)
        self.mode: dict[str, object] = {}
        self.paused = False  # snitchd's mode is silent-allow: the shield says so
        self.may_switch = False
        self._before_pause = "ask"  # the mode Resume returns to after an unlimited pause
        self.bridge.mode_changed.connect(self.show_mode, _QUEUED)
        self.bridge.registered.connect(lambda _uid: self.bridge.get_mode(), _QUEUED)
        self.show_mode({})

    def show_mode(self, state: dict[str, object]) -> None:
        """A mode from GetMode, SetMode or the ModeChanged signal (which does not say whether
        this user may switch: the last answer that did stands)."""
        if state:
            self.mode = state
            self.may_switch = bool(state.get("may_switch", self.may_switch))
        mode = str(self.mode.get("mode", ""))
        self.mode_line.setText(f"mode: {self.mode.get('describe', mode) or 'unknown'}")
        for action in self.pauses:
            action.setEnabled(self.may_switch)
            action.setToolTip("" if self.may_switch else PAUSE_NOT_ADMIN)
        self.resume.setEnabled(self.may_switch and mode == "silent-allow")
        if not self.mode:
            self.pause.setToolTip(PAUSE_UNKNOWN)
        else:
            self.pause.setToolTip("" if self.may_switch else PAUSE_NOT_ADMIN)
        self.paused = mode == "silent-allow"
        self.update_state()

    def _pause(self, seconds: float | None) -> None:
        mode = str(self.mode.get("mode", "ask"))
        if self.mode.get("until"):  # a pause during a time limit: snitchd keeps the mode before
            mode = str(self.mode.get("previous", "ask"))
        if mode != "silent-allow":
            self._before_pause = mode
        self.bridge.set_mode("silent-allow", seconds)

    def _resume(self) -> None:
        back = self.mode.get("previous") if self.mode.get("until") else self._before_pause
        self.bridge.set_mode(str(back or "ask"))

    def _activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason is QSystemTrayIcon.ActivationReason.Trigger:
            self.show_window()

    def show_window(self) -> None:
        """The popup, with the first prompt of the window or of the waiting list."""
        p = self.window.pending
        first = p.current or (p.aside[0] if p.aside else None)
        if first is not None:
            self.window.bring_back(first.id)

    def open_waiting(self) -> None:
        self.waiting.show()
        self.waiting.raise_()
        self.waiting.activateWindow()

    def _open(self, window: RulesWindow | ConnectionsWindow) -> None:
        window.show()
        window.raise_()
        window.activateWindow()
        window.refresh()

    def _standalone_buttons(self) -> None:
        for text, act in (
            ("&Rules…", lambda: self._open(self.rules)),
            ("Recent &connections…", lambda: self._open(self.connections)),
            ("&Quit", quit_now),
        ):
            button = QPushButton(text)
            button.setAutoDefault(False)
            button.clicked.connect(act)
            self.waiting.buttons.insertWidget(self.waiting.buttons.count() - 1, button)
