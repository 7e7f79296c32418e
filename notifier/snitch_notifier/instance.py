"""One notifier per user session: a second start (the launcher, while the session's copy
runs) asks the running one to show its waiting list, and leaves.

Two copies would be two agents of one user, each told of the other as a possible intruder.
The rendezvous is a local socket in `$XDG_RUNTIME_DIR` (0700, the user's own: no other user
can take the name first, as they could in /tmp), or a per-uid name when that is unset.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from PySide6.QtNetwork import QLocalServer, QLocalSocket

__all__ = ["Instance", "ask_running", "instance_path"]

log = logging.getLogger(__name__)

_SHOW = b"show\n"
_WAIT_MS = 1000


def instance_path() -> str:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "snitch-notifier.sock")
    return f"snitch-notifier-{os.getuid()}"


class Instance:
    """The running copy's end: `show` is called when another start asks for the window."""

    def __init__(self, path: str, show: Callable[[], None]) -> None:
        self.path = path
        self._show = show
        self.server = QLocalServer()
        self.server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        QLocalServer.removeServer(path)  # a socket left by a copy that crashed
        if not self.server.listen(path):
            log.warning("cannot listen on %s: %s", path, self.server.errorString())
        self.server.newConnection.connect(self._accept)

    def _accept(self) -> None:
        while (conn := self.server.nextPendingConnection()) is not None:
            conn.readyRead.connect(lambda c=conn: self._read(c))
            conn.disconnected.connect(conn.deleteLater)

    def _read(self, conn: QLocalSocket) -> None:
        if bytes(conn.readAll().data()).startswith(_SHOW.strip()):
            log.info("asked to show the waiting list (another start of snitch-notifier)")
            self._show()
        conn.disconnectFromServer()

    def close(self) -> None:
        self.server.close()


def ask_running(path: str) -> bool:
    """True when a copy runs here and was asked to show itself."""
    sock = QLocalSocket()
    sock.connectToServer(path)
    if not sock.waitForConnected(_WAIT_MS):
        return False
    sock.write(_SHOW)
    sock.flush()
    sock.waitForBytesWritten(_WAIT_MS)
    sock.disconnectFromServer()
    return True
