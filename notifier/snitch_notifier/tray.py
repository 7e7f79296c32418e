"""The tray icon: the way back to the popup, the rules and the recent connections.

Pause is snitchd's `silent-allow` mode with a time limit (issue 17): "for 15 minutes", "for 1
hour" or "until I resume"; Resume returns to the mode from before. Only an admin may switch
modes, so for anyone else the entries are greyed with the reason as tooltip; the submenu's
first line shows the mode in force, kept current by snitchd's ModeChanged signal. The tooltip
counts waiting prompts, so a hidden popup is never forgotten.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Qt
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QApplication, QMenu, QSystemTrayIcon

from snitch_notifier.bridge import AgentBridge
from snitch_notifier.icons import snitch_icon
from snitch_notifier.lists import ConnectionsWindow, RulesWindow
from snitch_notifier.popup import PromptWindow

__all__ = ["PAUSES", "PAUSE_NOT_ADMIN", "PAUSE_UNKNOWN", "Tray"]

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

_QUEUED = Qt.ConnectionType.QueuedConnection


class Tray(QObject):
    def __init__(self, bridge: AgentBridge, window: PromptWindow) -> None:
        super().__init__()
        self.window = window
        self.rules = RulesWindow(bridge)
        self.connections = ConnectionsWindow(bridge)
        self.icon = QSystemTrayIcon(snitch_icon(), self)
        self.menu = QMenu()
        self.menu.setToolTipsVisible(True)
        self.show_prompt = self.menu.addAction("Show &prompt", self._show_window)
        self.menu.addSeparator()
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
        self.bridge = bridge
        self.mode: dict[str, object] = {}
        self.may_switch = False
        self._before_pause = "ask"  # the mode Resume returns to after an unlimited pause
        bridge.mode_changed.connect(self.show_mode, _QUEUED)
        bridge.registered.connect(lambda _uid: bridge.get_mode(), _QUEUED)
        self.show_mode({})
        self.menu.addAction("&Rules…", lambda: self._open(self.rules))
        self.menu.addAction("Recent &connections…", lambda: self._open(self.connections))
        self.menu.addSeparator()
        self.menu.addAction("&Quit", QApplication.quit)
        self.icon.setContextMenu(self.menu)
        self.icon.activated.connect(self._activated)
        bridge.registered.connect(self._registered, _QUEUED)
        bridge.daemon_gone.connect(self._not_connected, _QUEUED)
        bridge.failed.connect(self._failed, _QUEUED)
        bridge.alert_arrived.connect(self.show_alert, _QUEUED)
        for signal in (bridge.prompt_arrived, bridge.prompt_cancelled):
            signal.connect(self.update_state, _QUEUED)
        window.answered.connect(self.update_state)
        window.expired.connect(self.update_state)
        self._connected = "connecting to snitchd…"
        self.last_alert = ""
        self.update_state()

    def update_state(self, *_: object) -> None:
        pending = self.window.current is not None
        self.show_prompt.setEnabled(pending)
        count = self.window.waiting + 1 if pending else 0
        waiting = f"{count} prompt{'s' if count != 1 else ''} waiting" if count else "no prompts"
        self.icon.setToolTip(f"snitch: {self._connected}; {waiting}")

    def show_alert(self, alert: dict[str, object]) -> None:
        """snitchd's alerts (an app's first connection, a changed executable, rules edited
        behind its back) as a tray balloon: seen, but never in the way of typing."""
        self.last_alert = str(alert.get("message", ""))
        self.icon.showMessage(
            "snitch alert", self.last_alert, QSystemTrayIcon.MessageIcon.Warning, 10_000
        )

    def _registered(self, uid: int) -> None:
        self._connected = f"asking for uid {uid}"
        self.update_state()

    def _not_connected(self, reason: str) -> None:
        self._connected = reason
        self.update_state()

    def _failed(self, what: str, message: str) -> None:
        if what in ("connect", "register"):
            self._not_connected(message)
        elif what == "mode":
            self.show_alert({"message": f"cannot switch mode: {message}"})

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
            self._show_window()

    def _show_window(self) -> None:
        if self.window.current is not None:
            self.window.show()
            self.window.raise_()
            self.window.activateWindow()

    def _open(self, window: RulesWindow | ConnectionsWindow) -> None:
        window.show()
        window.raise_()
        window.activateWindow()
        window.refresh()
