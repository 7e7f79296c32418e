"""The Network Monitor window in a process of its own, offscreen, as whichever user runs it
(through setpriv): waits until snitchd's totals arrived and the apps it names are shown (at
most 30 s), then prints what the window shows as one JSON line: its scope line and its app
rows (path, user, bytes sent, attempts, blocked).

  monitorwindow.py [APP ...]   the apps to wait for
"""

import json
import os
import sys
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtWidgets import QApplication

from snitch_notifier.monitor import MonitorWindow


def main() -> int:
    app = QApplication(sys.argv[:1])
    window = MonitorWindow()
    window.show()
    wanted = set(sys.argv[1:])
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
    print(json.dumps({"scope": window.scope.text(), "rows": rows, "read": window.totals_read}))
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
