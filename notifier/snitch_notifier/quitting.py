"""Quit a Qt application on SIGINT/SIGTERM (Ctrl-C, systemd stop), whenever the signal comes.

Python runs signal handlers only when the interpreter has control, and Qt's loop is C++: a
wake-up fd makes Qt hand control back to Python as soon as a signal arrives.

The handler posts the exit instead of calling it: `exit` and `quit` do nothing while the
event loop is not yet running, and a signal that came between the window's first showing and
`app.exec()` (a slow start, a loaded machine) was lost, leaving the program running after
Ctrl-C. A posted call runs as soon as the loop does.

`exit`, not `quit`: in Qt 6 `quit()` is a request that first sends every window a close
event, and the popup (which hides instead of closing) refused it, so SIGTERM with a prompt
showing was ignored (issue 15).
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from PySide6.QtCore import QSocketNotifier, QTimer
from PySide6.QtWidgets import QApplication

__all__ = ["quitting_on_signals"]


@contextmanager
def quitting_on_signals(app: QApplication) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM make `app.exec()` return 0."""
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    previous = signal.set_wakeup_fd(writer.fileno())
    notifier = QSocketNotifier(reader.fileno(), QSocketNotifier.Type.Read, app)
    notifier.activated.connect(lambda: reader.recv(64))
    handlers = {
        sig: signal.signal(sig, lambda *_: QTimer.singleShot(0, lambda: app.exit(0)))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        notifier.setEnabled(False)
        notifier.deleteLater()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(previous)
        reader.close()
        writer.close()
