"""snitchd's bus connection outlives a burst that fills its socket (a real dbus-daemon).

dbus-fast 5.2 closed the whole connection when a write found the socket buffer full (EAGAIN):
64 prompts at once, or a flood of signals while dbus-daemon was busy, cut snitchd off the bus,
and every agent and prompt with it (seen as "agent :1.2 Prompt failed: [Errno 11] Resource
temporarily unavailable"). `snitch_common.bus.patient_writes` makes a full socket a short write.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from snitch_common.bus import patient_writes
from snitchd.caller import CallerAwareBus
from tests.support.lab import Bus

pytestmark = pytest.mark.root

SIGNALS = 3000  # of 20 kB each through a 4 kB send buffer: the buffer is full many times over


@pytest.fixture
def private_bus() -> Iterator[Bus]:
    bus = Bus()
    try:
        yield bus
    finally:
        bus.stop()


async def _burst_then_ask(bus: MessageBus) -> Message:
    bus._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # type: ignore[attr-defined]
    body = "x" * 20_000
    for i in range(SIGNALS):
        bus.send(Message.new_signal("/org/snitch/Test", "org.snitch.Test", "Burst", "s", [body]))
        if i % 50 == 0:
            await asyncio.sleep(0)  # let the writer run between parts, as the loop would
    ask = Message(
        destination="org.freedesktop.DBus",
        path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus",
        member="GetId",
    )
    return await asyncio.wait_for(bus.call(ask), 30)


async def test_a_burst_that_fills_the_socket_does_not_close_snitchds_bus(
    private_bus: Bus,
) -> None:
    bus = patient_writes(await CallerAwareBus(bus_address=private_bus.address).connect())
    try:
        reply = await _burst_then_ask(bus)
        assert reply.message_type is MessageType.METHOD_RETURN
        assert bus.connected
    finally:
        bus.disconnect()
