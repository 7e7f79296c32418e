"""The popup application: one QApplication, the prompt window, the tray, the bus bridge.

`wire` is the whole contract between the bus side and the window, and tests use it as is.
Bridge → window connections are queued (the bridge emits from its worker thread); window →
bridge calls are direct, since the bridge's methods only hand work to its loop.
"""

from __future__ import annotations

import logging
import sys

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QSystemTrayIcon

from snitch_notifier.bridge import AgentBridge
from snitch_notifier.icons import snitch_icon, use_desktop_icon_theme
from snitch_notifier.instance import Instance, ask_running, instance_path
from snitch_notifier.pending import Expired
from snitch_notifier.popup import PromptWindow
from snitch_notifier.quitting import quitting_on_signals
from snitch_notifier.tray import Tray

__all__ = ["run_popup", "wire"]

log = logging.getLogger(__name__)


def wire(bridge: AgentBridge, window: PromptWindow) -> None:
    queued = Qt.ConnectionType.QueuedConnection
    bridge.prompt_arrived.connect(window.add_prompt, queued)
    bridge.prompt_cancelled.connect(window.cancel_prompt, queued)
    bridge.daemon_gone.connect(window.clear, queued)
    bridge.answered.connect(window.answer_taken, queued)
    bridge.answer_failed.connect(window.answer_failed, queued)
    bridge.deferred.connect(window.held, queued)
    bridge.defer_failed.connect(lambda prompt_id, _: window.hold_failed(prompt_id), queued)
    window.answered.connect(bridge.answer)
    window.defer_wanted.connect(bridge.defer)
    window.expired.connect(_log_expired)


def _log_expired(gone: Expired) -> None:
    log.info("prompt=%d not answered in time: %s", gone.prompt.id, gone.reason)


def run_popup(show: bool = False) -> int:
    """The popup agent; `show`: open the waiting list at once (the launcher's start). When a
    copy already runs in this session, it is asked to show its window instead."""
    app = QApplication(sys.argv[:1])
    path = instance_path()
    if ask_running(path):
        log.info("snitch-notifier already runs here: it shows its waiting list")
        return 0
    app.setApplicationName("snitch-notifier")
    app.setDesktopFileName("snitch-notifier")
    app.setQuitOnLastWindowClosed(False)  # the popup hides between prompts
    use_desktop_icon_theme()
    app.setWindowIcon(snitch_icon())
    window = PromptWindow()
    bridge = AgentBridge()
    wire(bridge, window)
    has_tray = QSystemTrayIcon.isSystemTrayAvailable()
    if not has_tray:
        log.info("no system tray here: a small window shows the waiting list instead")
    tray = Tray(bridge, window, has_tray, notify=bridge.notify)  # lives as long as the app
    tray.start()
    if show:
        tray.open_waiting()
    instance = Instance(path, tray.open_waiting)
    # Pending prompts get no answer from us at a signal: snitchd sees us leave the bus and
    # gives them to another agent or the default.
    with quitting_on_signals(app):
        bridge.start()
        try:
            return app.exec()
        finally:
            instance.close()
            bridge.stop()
