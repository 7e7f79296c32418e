"""A client of the bus that lies (run as an unprivileged user): it sends every other connection
on the bus a `Decision` signal that names an app that made no connection, a `Rates` signal
with that app moving a gigabyte, a `ModeChanged` to silent-allow, a `NameOwnerChanged`
saying snitchd left, and NetworkManager's and logind's `PropertiesChanged` (snitchd would
read the network or a session again). Signals to a connection are let through by the system
bus's default policy, so only a receiver that checks who sent them tells these from snitchd's,
the bus's and those services' own. Prints how many connections it wrote to.

  forger.py APP
"""

import asyncio
import json
import sys
import time

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from snitch_common.bus import BUS_NAME, call_bus_daemon

_NM = "org.freedesktop.NetworkManager"


async def main(app: str) -> int:
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    reply = await call_bus_daemon(bus, "ListNames", "", [])
    others = [n for n in reply.body[0] if n.startswith(":") and n != bus.unique_name]
    row = {
        "time": Variant("d", time.time()),
        "action": Variant("s", "allow"),
        "exe": Variant("s", app),
        "pid": Variant("u", 4242),
        "uid": Variant("u", 0),
        "proto": Variant("s", "tcp"),
        "dst": Variant("s", "203.0.113.66"),
        "dport": Variant("q", 443),
        "reason": Variant("s", "forged"),
    }
    rates = {
        "time": time.time(),
        "apps": [
            {
                "app": app,
                "uid": 0,
                "out": 10**9,
                "in": 0,
                "rate_out": 10.0**9,
                "rate_in": 0.0,
                "flows": 1,
                "total_out": 10**9,
                "total_in": 0,
            }
        ],
    }
    mode = {
        "mode": Variant("s", "silent-allow"),
        "was": Variant("s", "ask"),
        "why": Variant("s", "forged"),
    }
    for name in others:
        for member, interface, path, signature, body in (
            ("Decision", BUS_NAME, "/org/snitch/Firewall1", "a{sv}", [row]),
            ("Rates", BUS_NAME, "/org/snitch/Firewall1", "s", [json.dumps(rates)]),
            ("ModeChanged", BUS_NAME, "/org/snitch/Firewall1", "a{sv}", [mode]),
            (
                "NameOwnerChanged",
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "sss",
                [BUS_NAME, ":1.1", ""],
            ),
            (
                "PropertiesChanged",
                "org.freedesktop.DBus.Properties",
                "/org/freedesktop/NetworkManager",
                "sa{sv}as",
                [_NM, {"PrimaryConnection": Variant("o", "/")}, []],
            ),
            (
                "PropertiesChanged",
                "org.freedesktop.DBus.Properties",
                "/org/freedesktop/login1/session/_32",
                "sa{sv}as",
                ["org.freedesktop.login1.Session", {"Active": Variant("b", True)}, []],
            ),
        ):
            await bus.send(
                Message(
                    message_type=MessageType.SIGNAL,
                    destination=name,
                    path=path,
                    interface=interface,
                    member=member,
                    signature=signature,
                    body=body,
                )
            )
    # The bus handles one connection's messages in order: once it answered this, it has
    # passed every signal above on.
    await call_bus_daemon(bus, "GetId", "", [])
    print(len(others), flush=True)
    bus.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1])))
