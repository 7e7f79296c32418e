"""A stand-in for polkitd on the lab's private bus: `org.freedesktop.PolicyKit1.Authority`'s
CheckAuthorization, answered yes or no by the test (the real polkitd needs its action files
installed in /usr/share and a person's authentication agent).

No `from __future__ import annotations` here: dbus-fast reads the D-Bus signatures from the
annotations at class creation.
"""

import asyncio
import signal
from typing import Annotated, Any

from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature, DBusStr, DBusUInt32
from dbus_fast.service import ServiceInterface, dbus_method

from tests.support.lab import Bus

NAME = "org.freedesktop.PolicyKit1"
PATH = "/org/freedesktop/PolicyKit1/Authority"
POLICY = """<?xml version="1.0"?>
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy user="root"><allow own="org.freedesktop.PolicyKit1"/></policy>
  <policy context="default">
    <allow send_destination="org.freedesktop.PolicyKit1"/>
  </policy>
</busconfig>
"""


class FakeAuthority(ServiceInterface):
    """Each CheckAuthorization waits for the test's `decide(yes)`; the calls are recorded."""

    def __init__(self) -> None:
        super().__init__("org.freedesktop.PolicyKit1.Authority")
        self.calls: list[tuple[str, str, int]] = []  # (subject name, action id, flags)
        self.asked = asyncio.Event()
        self._answers: asyncio.Queue[bool] = asyncio.Queue()

    def decide(self, yes: bool) -> None:
        self._answers.put_nowait(yes)

    @dbus_method()
    async def CheckAuthorization(
        self,
        subject: Annotated[list[Any], DBusSignature("(sa{sv})")],
        action_id: DBusStr,
        details: Annotated[dict[str, str], DBusSignature("a{ss}")],
        flags: DBusUInt32,
        cancellation_id: DBusStr,
    ) -> Annotated[list[Any], DBusSignature("(bba{ss})")]:
        kind, fields = subject
        name = fields["name"].value if kind == "system-bus-name" else ""
        self.calls.append((name, action_id, flags))
        self.asked.set()
        yes = await self._answers.get()
        return [yes, False, {}]


async def serve(bus: Bus) -> tuple[MessageBus, FakeAuthority]:
    """Allow the name on the lab's bus (a policy file, then a reload), own it, serve."""
    (bus.dir / "policy" / "polkit-test.conf").write_text(POLICY)
    bus.proc.send_signal(signal.SIGHUP)
    conn = await MessageBus(bus_address=bus.address).connect()
    authority = FakeAuthority()
    conn.export(PATH, authority)
    for _ in range(100):  # the reload is asynchronous: until the policy lets us own the name
        try:
            await conn.request_name(NAME)
            return conn, authority
        except Exception:
            await asyncio.sleep(0.05)
    conn.disconnect()
    raise RuntimeError("cannot own org.freedesktop.PolicyKit1 on the lab's bus")
