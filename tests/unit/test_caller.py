"""The one shape of snitchd's D-Bus methods (`snitchd.caller.handled`), and the dbus-fast hook
that tells a method who called.

The decorator is the only place errors are mapped: a `SnitchError` must reach the caller as its
named D-Bus error with the user's message; anything else must reach the journal with its
traceback and the caller as a generic error (a traceback tells a stranger the install's paths
and versions). The caller's identity rides on a private dbus-fast method: if a dbus-fast
release drops or stops calling it, these tests fail before any user meets it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging

import pytest
from dbus_fast import BusType, DBusError, Message
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusStr
from dbus_fast.service import ServiceInterface, dbus_method

from snitch_common.errors import DBUS_ERROR_PREFIX, RuleNotFound
from snitchd.caller import Caller, CallerAwareBus, current_caller, handled, sender
from snitchd.callpace import CallPace
from snitchd.queries import QueryGate


class Service:
    """The things `handled` needs of a service; the caller is whoever the test says (the bus,
    which tells the real service, sits below this line)."""

    calls_per_user = 1000

    def __init__(self, caller: Caller) -> None:
        self.gate = QueryGate()
        self.pace = CallPace()
        self.caller = caller
        self.ran: list[str] = []
        self.release = asyncio.Event()

    @property
    def admin_group(self) -> str:
        return "snitch-admin"

    async def identify(self) -> Caller:
        return self.caller

    @handled()
    async def Missing(self) -> None:
        raise RuleNotFound("no rule with id 7 (see: snitchctl list-rules)")

    @handled()
    async def Broken(self) -> None:
        raise KeyError("/secret/path/of/the/install")

    @handled(admin="add rules")
    async def AdminOnly(self) -> str:
        self.ran.append("AdminOnly")
        return current_caller().name

    @handled(query=True)
    async def Query(self) -> int:
        self.ran.append("Query")
        await self.release.wait()
        return current_caller().uid


USER = Caller(":1.7", 1000, admin=False)
ROOT = Caller(":1.8", 0, admin=True)


async def test_a_snitch_error_becomes_its_named_dbus_error() -> None:
    with pytest.raises(DBusError) as caught:
        await Service(USER).Missing()
    assert caught.value.type == DBUS_ERROR_PREFIX + "RuleNotFound"
    assert caught.value.text == "no rule with id 7 (see: snitchctl list-rules)"


async def test_an_unexpected_error_is_logged_and_not_shown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR), pytest.raises(DBusError) as caught:
        await Service(USER).Broken()
    assert caught.value.type == DBUS_ERROR_PREFIX + "Failed"
    assert "secret" not in caught.value.text
    assert caught.value.text == "internal error: see the snitchd log"
    (record,) = caplog.records
    assert "Broken" in record.getMessage()
    assert record.exc_info is not None and "secret" in str(record.exc_info[1])


async def test_a_user_who_is_not_an_admin_is_refused_before_the_method_runs() -> None:
    service = Service(USER)
    with pytest.raises(DBusError) as caught:
        await service.AdminOnly()
    assert caught.value.type == DBUS_ERROR_PREFIX + "NotAuthorized"
    assert "not authorized to add rules: uid 1000" in caught.value.text
    assert "'snitch-admin'" in caught.value.text
    assert service.ran == []


async def test_an_admin_runs_the_method_and_it_sees_the_caller() -> None:
    assert await Service(ROOT).AdminOnly() == ":1.8"


async def test_a_second_query_of_the_same_uid_is_refused_while_one_runs() -> None:
    """One query per uid, from any of its connections; the slot is free again afterwards."""
    service = Service(USER)
    first = asyncio.create_task(service.Query())
    while not service.ran:
        await asyncio.sleep(0)
    service.caller = Caller(":1.99", USER.uid, admin=False)  # another connection, same uid
    with pytest.raises(DBusError) as caught:
        await service.Query()
    assert caught.value.type == DBUS_ERROR_PREFIX + "Busy"
    assert "uid 1000 already has a query running" in caught.value.text
    service.caller = ROOT  # another uid is not held up
    service.release.set()
    assert await service.Query() == 0
    assert await first == USER.uid
    service.caller = USER
    assert await service.Query() == USER.uid


def test_the_decorator_keeps_the_dbus_signature() -> None:
    """dbus-fast reads a method's D-Bus signature from its annotations, through `wraps`."""

    class Probe(ServiceInterface):
        def __init__(self) -> None:
            super().__init__("org.snitch.Test1")

        @dbus_method()
        @handled()
        async def Echo(self, text: DBusStr) -> DBusStr:
            return text

    xml = Probe().introspect().to_xml()
    (method,) = xml.iter("method")
    assert [(a.get("direction"), a.get("type")) for a in method.iter("arg")] == [
        ("in", "s"),
        ("out", "s"),
    ]


# -- the private dbus-fast hook ---------------------------------------------------------------


def test_dbus_fast_still_has_the_hook_the_caller_check_rides_on() -> None:
    """`CallerAwareBus` overrides dbus-fast's private `_make_method_handler(interface, method)`
    (pinned in pyproject.toml). If this fails, dbus-fast changed: find the new way to learn a
    call's sender before widening the pin."""
    hook = MessageBus.__dict__.get("_make_method_handler")
    assert hook is not None, "dbus_fast.aio.MessageBus._make_method_handler is gone"
    assert list(inspect.signature(hook).parameters) == ["self", "interface", "method"]


class Probe(ServiceInterface):
    def __init__(self) -> None:
        super().__init__("org.snitch.Test1")

    @dbus_method()
    async def Who(self) -> DBusStr:
        return sender()


class OfflineBus(CallerAwareBus):
    """The socket replaced (below the bus line): what would be written is kept."""

    def __init__(self) -> None:
        super().__init__(bus_type=BusType.SYSTEM)
        self.sent: list[Message] = []

    def send(self, msg: Message) -> asyncio.Future[None]:
        self.sent.append(msg)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def test_the_sender_reaches_the_method_through_dbus_fast_dispatch() -> None:
    """Calls go through dbus-fast's own dispatch (`_process_message`, as when read from the
    socket): each method's task must see its own call's sender, and nothing may stay behind."""
    bus = OfflineBus()
    bus.export("/org/snitch/Test1", Probe())
    for serial, name in enumerate((":1.42", ":1.43"), start=1):
        bus._process_message(
            Message(
                path="/org/snitch/Test1",
                interface="org.snitch.Test1",
                member="Who",
                sender=name,
                serial=serial,
            )
        )
    assert sender() == ""
    for _ in range(100):
        replies = {m.reply_serial: m.body for m in bus.sent if m.reply_serial}
        if len(replies) == 2:
            break
        await asyncio.sleep(0)
    assert replies == {1: [":1.42"], 2: [":1.43"]}
