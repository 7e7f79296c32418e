"""What bench/disturb.py's window 12 runs as uid 65534: snitchd's `Status` called over the
system bus as fast as the bus answers, from CONNECTIONS bus connections with IN_FLIGHT calls
outstanding on each, for SECONDS. Any user may call `Status`, and each call is parsed and
answered on snitchd's one event loop, the loop that reads the queue. Prints "calls N errors E".

    python bench/dbusflood.py CONNECTIONS IN_FLIGHT SECONDS
"""

from __future__ import annotations

import asyncio
import sys
import time

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from snitch_common.bus import BUS_NAME, INTERFACE, OBJECT_PATH


async def _caller(bus: MessageBus, end: float, counts: list[int]) -> None:
    status = Message(destination=BUS_NAME, path=OBJECT_PATH, interface=INTERFACE, member="Status")
    while time.monotonic() < end:
        reply = await bus.call(status)
        counts[reply is None or reply.message_type is MessageType.ERROR] += 1


async def _flood(connections: int, in_flight: int, seconds: float) -> list[int]:
    end = time.monotonic() + seconds
    counts = [0, 0]  # answered, errors
    buses = [await MessageBus(bus_type=BusType.SYSTEM).connect() for _ in range(connections)]
    try:
        await asyncio.gather(
            *(_caller(bus, end, counts) for bus in buses for _ in range(in_flight))
        )
    finally:
        for bus in buses:
            bus.disconnect()
    return counts


def main() -> None:
    connections, in_flight, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    answered, errors = asyncio.run(_flood(connections, in_flight, seconds))
    print(f"calls {answered} errors {errors}", flush=True)


if __name__ == "__main__":
    main()
