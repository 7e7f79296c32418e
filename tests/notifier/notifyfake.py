"""Test doubles below the bus line for the notifications fallback: a private session bus
(a real dbus-daemon) and a small org.freedesktop.Notifications server.

Used by tests/notifier/test_fallback.py and tests/integration/test_notifier_e2e.py. No
`from __future__ import annotations` here: dbus-fast reads the D-Bus signatures from the
annotations when the class is made, and string annotations break `-> None`.
"""

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Annotated, Any

from dbus_fast import Variant
from dbus_fast.annotations import DBusInt32, DBusSignature, DBusStr, DBusUInt32
from dbus_fast.service import ServiceInterface, dbus_method, dbus_signal


class SessionBus:
    """The distro's session.conf on a socket in a temp dir of its own (not the user's bus).

    With `any_user`, other users may connect too (a session bus admits only its owner), so a
    test can run the notifier as an unprivileged user, as on a real desktop.
    """

    def __init__(self, any_user: bool = False) -> None:
        # Not under pytest's tmp dir (0700): an unprivileged notifier must reach the socket.
        self.dir = Path(tempfile.mkdtemp(prefix="snitch-session-"))
        self.dir.chmod(0o755)
        config = Path("/usr/share/dbus-1/session.conf").read_text()
        if any_user:
            allow = '<policy context="default"><allow user="*"/></policy>'
            config = config.replace("</busconfig>", allow + "\n</busconfig>")
        (self.dir / "session.conf").write_text(config)
        self.proc = subprocess.Popen(
            [
                "dbus-daemon",
                "--print-address",
                "--nofork",
                f"--config-file={self.dir / 'session.conf'}",
                f"--address=unix:path={self.dir / 'session.sock'}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # as root in a container: "cannot set fd limit" noise
            text=True,
        )
        assert self.proc.stdout is not None
        self.address = self.proc.stdout.readline().strip()
        assert self.address.startswith("unix:"), "dbus-daemon did not start"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class FakeNotifications(ServiceInterface):
    def __init__(self) -> None:
        super().__init__("org.freedesktop.Notifications")
        self.notified: list[dict[str, Any]] = []
        self.closed: list[int] = []

    @dbus_method()
    def Notify(
        self,
        app_name: DBusStr,
        replaces_id: DBusUInt32,
        app_icon: DBusStr,
        summary: DBusStr,
        body: DBusStr,
        actions: Annotated[list[str], DBusSignature("as")],
        hints: Annotated[dict[str, Variant], DBusSignature("a{sv}")],
        expire_timeout: DBusInt32,
    ) -> DBusUInt32:
        self.notified.append(
            {
                "id": 101 + len(self.notified),
                "app_name": app_name,
                "icon": app_icon,
                "summary": summary,
                "body": body,
                "actions": actions,
                "hints": {k: v.value for k, v in hints.items()},
                "timeout": expire_timeout,
            }
        )
        return int(self.notified[-1]["id"])

    @dbus_method()
    def CloseNotification(self, notification: DBusUInt32) -> None:
        self.closed.append(notification)
        self.NotificationClosed(notification, 3)

    @dbus_method()
    def GetCapabilities(self) -> Annotated[list[str], DBusSignature("as")]:
        return ["actions", "body"]

    @dbus_signal()
    def ActionInvoked(
        self, notification: int, key: str
    ) -> Annotated[list[Any], DBusSignature("us")]:
        return [notification, key]

    @dbus_signal()
    def NotificationClosed(
        self, notification: int, reason: int
    ) -> Annotated[list[Any], DBusSignature("uu")]:
        return [notification, reason]
