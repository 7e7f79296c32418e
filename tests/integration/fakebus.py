"""What every stand-in system service on the lab's private bus does (logindfake, polkitfake,
test_profile_ssid's NetworkManager): let root own the well-known name and everyone call it (a
policy file, then a reload), export the fake's objects, own the name."""

from __future__ import annotations

import asyncio

from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface

from snitch_common.bus import call_bus_daemon
from tests.support.lab import Bus

POLICY = """<?xml version="1.0"?>
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy user="root"><allow own="{name}"/></policy>
  <policy context="default">
    <allow send_destination="{name}"/>
  </policy>
</busconfig>
"""


async def serve(bus: Bus, name: str, objects: dict[str, ServiceInterface]) -> MessageBus:
    """Allow `name` on the lab's bus, export `objects` (path: interface), own the name, serve
    until the caller disconnects the returned connection."""
    (bus.dir / "policy" / f"{name}-test.conf").write_text(POLICY.format(name=name))
    conn = await MessageBus(bus_address=bus.address).connect()
    # Asked over the bus, not by SIGHUP: a bus just started (its socket there) may not have
    # its SIGHUP handler yet, and the signal's default action ended it (seen once in CI, on a
    # loaded machine: our connection was reset). A connection proves it runs its loop.
    await call_bus_daemon(conn, "ReloadConfig", "", [])
    for path, interface in objects.items():
        conn.export(path, interface)
    for _ in range(100):  # the reload is asynchronous: until the policy lets us own the name
        try:
            await conn.request_name(name)
            return conn
        except Exception:
            await asyncio.sleep(0.05)
    conn.disconnect()
    raise RuntimeError(f"cannot own {name} on the lab's bus")
