"""A stand-in for polkitd on the lab's private bus: `org.freedesktop.PolicyKit1.Authority`'s
CheckAuthorization, answered yes or no by the test (the real polkitd needs its action files
installed in /usr/share and a person's authentication agent).

No `from __future__ import annotations` here: dbus-fast reads the D-Bus signatures from the
annotations at class creation.
"""

import asyncio
from typing import Annotated, Any

from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature, DBusStr, DBusUInt32
from dbus_fast.service import ServiceInterface, dbus_method

from tests.integration import fakebus
from tests.support.lab import Bus

NAME = "org.freedesktop.PolicyKit1"
PATH = "/org/freedesktop/PolicyKit1/Authority"


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
    """Own the name on the lab's bus and serve an authority that waits for the test's word."""
    authority = FakeAuthority()
    return await fakebus.serve(bus, NAME, {PATH: authority}), authority
