"""Which network the machine is on, followed as it changes: for profiles that switch by
themselves (issue 17).

The default route's interface and its gateway's MAC address come from netlink (pyroute2 for the
reads). A thread of its own waits on a route-netlink socket subscribed to link, neighbour and
route changes, so the packet loop never reads netlink: on a change (bursts are taken together,
at most a few reads a second, so a user who makes the kernel learn neighbours by the thousand
costs us little) it reads the state again and hands it to the loop only when it differs. The
SSID comes from NetworkManager over D-Bus, where NetworkManager runs (`wifi_ssid`); without it,
profiles match by gateway and interface only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from pyroute2 import IPRoute

from snitchd.profiles import NetworkState
from snitchd.stopper import Stopper

__all__ = ["NetWatch", "read_network", "wifi_ssid"]

log = logging.getLogger(__name__)

_RTMGRP_LINK = 0x1
_RTMGRP_NEIGH = 0x4
_RTMGRP_IPV4_ROUTE = 0x40
_RTMGRP_IPV6_ROUTE = 0x400
_SETTLE = 0.2  # seconds a burst of changes is given to end before the state is read
_DRAIN_MAX = 10_000  # messages read per burst at most, then the state is read anyway


def read_network(ipr: IPRoute) -> NetworkState:
    """The IPv4 default route of the main table with the lowest metric (else IPv6's), its
    interface, its gateway and the gateway's MAC from the neighbour table (None until the
    kernel has resolved it)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        routes = [r for r in ipr.get_default_routes(family=family) if r.get("RTA_OIF")]
        if not routes:
            continue
        route = min(routes, key=lambda r: r.get("RTA_PRIORITY") or 0)
        index = route.get("RTA_OIF")
        links = ipr.link("get", index=index)
        iface = links[0].get("IFLA_IFNAME") if links else None
        gateway = route.get("RTA_GATEWAY")
        mac = None
        if gateway is not None:
            for entry in ipr.neigh("dump", family=family):
                if entry.get("NDA_DST") == gateway and entry["ifindex"] == index:
                    mac = entry.get("NDA_LLADDR")
                    break
        return NetworkState(iface, mac.lower() if mac else None, gateway)
    return NetworkState()


class NetWatch:
    """A thread that calls `on_change` on `loop` with each new `NetworkState`."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_change: Callable[[NetworkState], None]
    ) -> None:
        self._loop = loop
        self._on_change = on_change
        self._stop = Stopper()
        self._thread = threading.Thread(target=self._run, name="snitch-netwatch", daemon=True)
        self.reads = 0

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.end(self._thread)

    def _run(self) -> None:
        try:
            sock = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
            )
            sock.bind((0, _RTMGRP_LINK | _RTMGRP_NEIGH | _RTMGRP_IPV4_ROUTE | _RTMGRP_IPV6_ROUTE))
        except OSError as exc:
            log.warning("network changes not followed: cannot open route netlink: %s", exc)
            return
        last: NetworkState | None = None
        try:
            with sock, IPRoute() as ipr:
                sock.setblocking(False)
                changed = True
                while not self._stop.is_set():
                    if changed:
                        last = self._read(ipr, last)
                    changed = self._wait(sock)
        except Exception:  # profiles then stay as they are; the firewall goes on
            log.exception("network changes no longer followed")

    def _read(self, ipr: IPRoute, last: NetworkState | None) -> NetworkState | None:
        try:
            state = read_network(ipr)
        except Exception as exc:  # a netlink error: the next change reads again
            log.warning("cannot read the network state: %s", exc)
            return last
        self.reads += 1
        if state != last:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self._loop.call_soon_threadsafe(self._on_change, state)
        return state

    def _wait(self, sock: socket.socket) -> bool:
        """Whether something changed: waits for a message (or `close`), then lets a burst
        settle and drains it."""
        if not self._stop.readable(sock):
            return False
        try:
            sock.recv(65536)
        except BlockingIOError:
            return False
        except OSError:  # ENOBUFS: changes were lost; read the state again
            return True
        self._stop.sleep(_SETTLE)
        try:
            for _ in range(_DRAIN_MAX):
                sock.recv(65536)
        except OSError:  # BlockingIOError: drained (or ENOBUFS: read anyway)
            pass
        return True


_NM = "org.freedesktop.NetworkManager"


async def _nm_property(bus: MessageBus, path: str, interface: str, name: str) -> object:
    reply = await bus.call(
        Message(
            destination=_NM,
            path=path,
            interface="org.freedesktop.DBus.Properties",
            member="Get",
            signature="ss",
            body=[interface, name],
        )
    )
    if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
        raise LookupError(f"{interface}.{name}: {reply.error_name if reply else 'no reply'}")
    return reply.body[0].value


async def wifi_ssid(bus: MessageBus) -> str | None:
    """The SSID of NetworkManager's primary connection when it is Wi-Fi; None otherwise, and
    when NetworkManager does not run or does not say."""
    try:
        primary = str(await _nm_property(bus, "/org/freedesktop/NetworkManager", _NM,
                                         "PrimaryConnection"))  # fmt: skip
        if primary in ("", "/"):
            return None
        active = f"{_NM}.Connection.Active"
        if await _nm_property(bus, primary, active, "Type") != "802-11-wireless":
            return None
        ap = str(await _nm_property(bus, primary, active, "SpecificObject"))
        ssid = await _nm_property(bus, ap, f"{_NM}.AccessPoint", "Ssid")
    except (LookupError, ValueError, TypeError, AttributeError, OSError, EOFError):
        return None  # OSError, EOFError: the bus connection went away
    if not isinstance(ssid, bytes | bytearray | list):
        return None
    return bytes(ssid).decode("utf-8", errors="replace") or None
