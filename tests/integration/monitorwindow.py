"""The Network Monitor window in a process of its own, offscreen, as whichever user runs it
(through setpriv): waits until snitchd's totals arrived and the apps it names are shown (at
most 30 s), then prints what the window shows as one JSON line: its scope line and its app
rows (path, user, bytes sent, attempts, blocked).

  monitorwindow.py [APP ...]   the apps to wait for
  --deny                       then select the first app's first destination and ask for
                               "deny this from now on": print what the rule dialog said
                               (`rule`), after snitchd answered (at most 30 s)
"""

import json
import os
import sys
import time
from collections.abc import Callable

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtWidgets import QApplication

from snitch_common.answers import Action
from snitch_notifier.monitor import MonitorWindow


def main() -> int:
    app = QApplication(sys.argv[:1])
    window = MonitorWindow()
    window.show()
    deny = "--deny" in sys.argv
    wanted = {a for a in sys.argv[1:] if a != "--deny"}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        app.processEvents()
        shown = {a.key.app for a in window.rows()}
        if window.totals_read and wanted <= shown:
            break
        time.sleep(0.05)
    rows = [
        {
            "app": a.key.app,
            "uid": a.key.uid,
            "bytes_out": a.bytes_out,
            "connections": a.connections,
            "blocked": a.blocked,
        }
        for a in window.rows()
    ]
    said = {"scope": window.scope.text(), "rows": rows, "read": window.totals_read}
    if deny:
        said["rule"] = _deny_first(app, window)
    print(json.dumps(said))
    window.close()
    return 0


def _deny_first(app: QApplication, window: MonitorWindow) -> str:
    """Ask to deny the first app's first destination; what the dialog said once answered."""
    key = window.apps.key_at(0)
    if key is None:
        return "no app"
    window.select_app(key)
    if not _until(app, lambda: window.destinations.rowCount() > 0):
        return "no destination"
    window.destinations.selectRow(0)
    dialog = window.make_rule(Action.DENY)
    if dialog is None:
        return "no dialog"
    dialog.submit()
    _until(app, lambda: bool(dialog.result_text) or dialog.make.isEnabled())
    return dialog.result_text or dialog.status.text()


def _until(app: QApplication, done: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        app.processEvents()
        if done():
            return True
        time.sleep(0.05)
    return False


if __name__ == "__main__":
    sys.exit(main())
