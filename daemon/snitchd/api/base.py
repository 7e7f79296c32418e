"""The D-Bus service's shared state and the access check every method's `handled` relies on
(`identify`: the caller's uid, from the bus, and whether it is an admin).
"""

import asyncio
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface

from snitch_common.bus import INTERFACE, OBJECT_PATH, call_bus_daemon
from snitch_common.errors import NotAuthorized, SnitchError
from snitchd.access import is_admin
from snitchd.caller import Caller, sender
from snitchd.callpace import CallPace
from snitchd.firewall import Firewall
from snitchd.logind import Logind
from snitchd.queries import QueryGate, Reader
from snitchd.switching import Switcher

__all__ = ["ServiceBase"]


class ServiceBase(ServiceInterface):
    """The service's state, shared by its rooms (each a mixin of `FirewallService`): the
    firewall, the bus, the callers' uids and subscriptions, and who calls."""

    def __init__(
        self,
        firewall: Firewall,
        bus: MessageBus,
        backend: str,
        reader: Reader | None = None,
        switcher: Switcher | None = None,
    ) -> None:
        super().__init__(INTERFACE)
        self._switcher = switcher
        self.firewall = firewall
        self.bus = bus
        self.backend = backend
        self.gate = QueryGate()
        self.pace = CallPace()
        self._reader = reader
        self._uids: dict[str, int] = {}
        self._monitors: dict[str, int | None] = {}
        self.agents_refused = 0
        self._rate_watchers: dict[str, int | None] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.logind: Logind | None = None  # set by `serve`, once on the bus

    @property
    def admin_group(self) -> str:
        return self.firewall.config.admin_group

    @property
    def calls_per_user(self) -> int:
        return self.firewall.config.dbus_calls_per_user

    @property
    def reader(self) -> Reader:
        if self._reader is None:
            raise SnitchError("cannot read the store: snitchd was started without a reader")
        return self._reader

    @property
    def switcher(self) -> Switcher:
        if self._switcher is None:
            raise SnitchError("cannot change modes: snitchd was started without a switcher")
        return self._switcher

    def name_lost(self, name: str) -> None:
        """A connection left the bus: forget its uid, monitor and prompts."""
        self._uids.pop(name, None)
        self._monitors.pop(name, None)
        self._rate_watchers.pop(name, None)
        self.firewall.broker.unregister(name)

    async def identify(self) -> Caller:
        """The caller, by the uid the bus reports for its connection (cached per unique name:
        a unique name is never reused on a bus). No sender, no rights."""
        name = sender()
        if not name:
            raise NotAuthorized("cannot identify the caller: the bus gave no sender")
        uid = self._uids.get(name)
        if uid is None:
            reply = await call_bus_daemon(self.bus, "GetConnectionUnixUser", "s", [name])
            if reply.message_type is not MessageType.METHOD_RETURN:
                raise NotAuthorized(f"cannot identify caller {name}")
            uid = int(reply.body[0])
            self._uids[name] = uid
        return Caller(name, uid, is_admin(uid, self.admin_group))

    def _signal(self, destination: str, member: str, signature: str, body: list[Any]) -> None:
        """A signal to one subscriber only (unicast: others' flows never reach it)."""
        self.bus.send(
            Message(
                message_type=MessageType.SIGNAL,
                destination=destination,
                path=OBJECT_PATH,
                interface=INTERFACE,
                member=member,
                signature=signature,
                body=body,
            )
        )
