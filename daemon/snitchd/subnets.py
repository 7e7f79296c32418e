"""The machine's own subnets, followed over netlink, for `to=lan` and `to=broadcast`.

A thread, not the packet loop: it waits on a netlink socket subscribed to address changes
(RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR), and on each change (or every `_RESCAN` seconds, in
case a burst overflowed the socket) dumps the addresses with pyroute2 and, if the subnets
changed, hands them to the loop, which swaps them into `Places` with one assignment. Loopback and
host routes (/32, /128) are not subnets: a flow to the machine's own address is `localhost`'s
business only when it is a loopback address; nor is a subnet wider than /8 (/32 for IPv6),
which a hostile DHCP server or router could hand out to make `to=lan` cover the internet.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_interface

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR

from snitchd.places import Places
from snitchd.stopper import Stopper

__all__ = ["WIDEST_SUBNET", "SubnetWatch", "subnets_of"]

log = logging.getLogger(__name__)

WIDEST_SUBNET = {4: 8, 6: 32}  # prefix lengths: a connected subnet wider is left out
_RESCAN = 30.0  # seconds: a dump even without an event (an overflowed socket loses events)

Subnets = tuple[tuple[str, ...], tuple[IPv4Address | IPv6Address, ...]]


def subnets_of(addresses: Iterable[tuple[str, int, str | None]]) -> Subnets:
    """(address, prefix length, broadcast) per address → the connected subnets (CIDR text,
    sorted) and the broadcast addresses."""
    nets: set[str] = set()
    broadcasts: set[IPv4Address | IPv6Address] = set()
    for addr, prefix, broadcast in addresses:
        iface = ip_interface(f"{addr}/{prefix}")
        if iface.ip.is_loopback or prefix == iface.max_prefixlen:
            continue
        if prefix < WIDEST_SUBNET[iface.version]:
            # A DHCP server's mask of 0.0.0.0 (or a router's short on-link prefix) would make
            # `allow to=lan` hold for the whole internet: such a subnet is not the LAN's.
            log.warning("connected subnet %s left out of to=lan: wider than /%d",
                        iface.network, WIDEST_SUBNET[iface.version])  # fmt: skip
            continue
        nets.add(str(iface.network))
        if broadcast:
            broadcasts.add(ip_address(broadcast))
        elif iface.version == 4 and prefix <= 30:
            broadcasts.add(iface.network.broadcast_address)
    return tuple(sorted(nets)), tuple(sorted(broadcasts, key=str))


def _dump() -> Subnets:
    with IPRoute() as ipr:
        found = [
            (
                msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS"),
                int(msg["prefixlen"]),
                msg.get_attr("IFA_BROADCAST"),
            )
            for msg in ipr.get_addr()
        ]
    return subnets_of((a, p, b) for a, p, b in found if a)


class SubnetWatch:
    """Follows the addresses in a thread; `places.set_connected` runs on the loop."""

    def __init__(self, places: Places) -> None:
        self.places = places
        self._stop = Stopper()
        self._thread: threading.Thread | None = None
        self._last: Subnets | None = None

    async def start(self) -> None:
        """One dump before any flow is decided, then the thread. pyroute2's IPRoute runs an
        event loop of its own: it cannot be made in the thread that runs ours."""
        loop = asyncio.get_running_loop()
        self._set(loop, await asyncio.to_thread(_dump))
        self._thread = threading.Thread(
            target=self._run, args=(loop,), name="snitchd-subnets", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._stop.end(self._thread)

    def _set(self, loop: asyncio.AbstractEventLoop, subnets: Subnets) -> None:
        if subnets == self._last:
            return
        self._last = subnets
        nets, broadcasts = subnets
        log.info("connected subnets: %s", " ".join(nets) or "none")
        apply: Callable[[], None] = lambda: self.places.set_connected(nets, broadcasts)  # noqa: E731
        if self._thread is None:
            apply()
        else:
            loop.call_soon_threadsafe(apply)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            events = IPRoute()
            events.bind(groups=RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
        except Exception:
            log.exception("cannot follow address changes: to=lan keeps the subnets seen at start")
            return
        try:
            while True:
                ready = self._stop.readable(events, _RESCAN)
                if self._stop.is_set():
                    break
                if ready:
                    events.get()  # drain; the dump says what is now
                try:
                    self._set(loop, _dump())
                except Exception:
                    log.exception("cannot read the machine's addresses")
        finally:
            events.close()
