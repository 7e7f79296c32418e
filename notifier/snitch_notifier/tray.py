"""The tray icon: the way back to the popup, the rules and the recent connections.

Pause (silent mode) is in the menu but disabled, with a tooltip that says why: snitchd has no
call for it yet, and a switch that does nothing would lie about what the firewall does.
The tooltip counts waiting prompts, so a hidden popup is never forgotten.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Qt
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QApplication, QMenu, QSystemTrayIcon

from snitch_notifier.bridge import AgentBridge
from snitch_notifier.icons import snitch_icon
from snitch_notifier.lists import ConnectionsWindow, RulesWindow
from snitch_notifier.monitor import open_monitor
from snitch_notifier.popup import PromptWindow

__all__ = ["PAUSE_UNSUPPORTED", "Tray"]

PAUSE_UNSUPPORTED = "snitchd cannot pause prompting yet: every new connection is still asked"

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
        self.pause = QAction("Pa&use prompts", self.menu)
        self.pause.setEnabled(False)
        self.pause.setToolTip(PAUSE_UNSUPPORTED)
        self.menu.addAction(self.pause)
        self.menu.addAction("&Rules…", lambda: self._open(self.rules))
        self.menu.addAction("Recent &connections…", lambda: self._open(self.connections))
        self.menu.addAction("Network &Monitor…", open_monitor)
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
