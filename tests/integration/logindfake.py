"""A stand-in for systemd-logind on the lab's private bus (the machine has no systemd as PID 1):
`org.freedesktop.login1`'s Manager (GetSessionByPID, GetUser) and Session objects with the
properties snitchd reads (Id, Active, Seat, Type, Remote), whose Active the test switches, with
the PropertiesChanged signal logind sends, counting how often they were read.

No `from __future__ import annotations` here: dbus-fast reads the D-Bus signatures from the
annotations at class creation.
"""

from collections.abc import Callable
from typing import Annotated, Any

from dbus_fast import DBusError, PropertyAccess
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusBool, DBusObjectPath, DBusSignature, DBusStr, DBusUInt32
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

from tests.integration import fakebus
from tests.support.lab import Bus

NAME = "org.freedesktop.login1"
MANAGER = "/org/freedesktop/login1"


class FakeSession(ServiceInterface):
    def __init__(self, sid: str, seat: str, kind: str, remote: bool, active: bool) -> None:
        super().__init__("org.freedesktop.login1.Session")
        self.sid, self.seat, self.kind, self.remote, self.active = sid, seat, kind, remote, active
        self.path = f"/org/freedesktop/login1/session/_3{sid}"
        self.reads = 0  # how often a client read the session's properties (GetAll reads Id)

    @dbus_property(access=PropertyAccess.READ)
    def Id(self) -> DBusStr:
        self.reads += 1
        return self.sid

    @dbus_property(access=PropertyAccess.READ)
    def Active(self) -> DBusBool:
        return self.active

    @dbus_property(access=PropertyAccess.READ)
    def Seat(self) -> Annotated[list[Any], DBusSignature("(so)")]:
        path = f"/org/freedesktop/login1/seat/{self.seat}" if self.seat else "/"
        return [self.seat, path]

    @dbus_property(access=PropertyAccess.READ)
    def Type(self) -> DBusStr:
        return self.kind

    @dbus_property(access=PropertyAccess.READ)
    def Remote(self) -> DBusBool:
        return self.remote

    def switch(self, active: bool) -> None:
        self.active = active
        self.emit_properties_changed({"Active": active})


class FakeManager(ServiceInterface):
    """`session_for(pid)` says which session a pid sits in (None: none, as for a user unit)."""

    def __init__(self, session_for: Callable[[int], FakeSession | None]) -> None:
        super().__init__("org.freedesktop.login1.Manager")
        self.session_for = session_for

    @dbus_method()
    def GetSessionByPID(self, pid: DBusUInt32) -> DBusObjectPath:
        session = self.session_for(pid)
        if session is None:
            raise DBusError("org.freedesktop.login1.NoSessionForPID", f"PID {pid} has none")
        return session.path

    @dbus_method()
    def GetUser(self, uid: DBusUInt32) -> DBusObjectPath:
        raise DBusError("org.freedesktop.login1.NoSuchUser", f"user {uid} is not logged in")


async def serve(
    bus: Bus, sessions: list[FakeSession], session_for: Callable[[int], FakeSession | None]
) -> MessageBus:
    """Own the name on the lab's bus and serve the manager and `sessions`."""
    objects: dict[str, ServiceInterface] = {MANAGER: FakeManager(session_for)}
    objects.update((session.path, session) for session in sessions)
    return await fakebus.serve(bus, NAME, objects)
