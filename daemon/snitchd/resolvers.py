"""The system's DNS resolvers: the only servers whose answers may name an address.

`dns_resolvers` in the config lists addresses, and "system" (the default) stands for what the
machine itself uses: the `nameserver` lines of `resolv_conf` (`/etc/resolv.conf`), the upstream
servers systemd-resolved uses (its D-Bus API, `org.freedesktop.resolve1`: the `DNS` and
`FallbackDNS` properties), the servers NetworkManager hands out (`DnsManager.Configuration`),
and the local stubs on loopback (127.0.0.53, 127.0.0.54, 127.0.0.1, ::1: port 53 on this
machine can only be bound by root or a service, unless `net.ipv4.ip_unprivileged_port_start`
was lowered). A program that asks a server of its own choosing gets its answer, but snitch does
not believe it.

They change (DHCP, VPNs, Wi-Fi): `follow` re-reads the file when its inode, size or mtime
changes (a stat per second, in a worker thread) and asks the bus every few seconds; the packet
loop only reads `trusts`, a frozenset lookup. D-Bus sources are optional: where resolved or
NetworkManager does not run (no owner of the name; never activated), they add nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from dbus_fast import BusType, Message, MessageFlag, MessageType
from dbus_fast.aio import MessageBus

from snitch_common.records import IPAddress

__all__ = [
    "LOCAL_STUBS",
    "SYSTEM",
    "Resolvers",
    "parse_nm_configuration",
    "parse_resolv_conf",
    "parse_resolved_servers",
]

log = logging.getLogger(__name__)

SYSTEM = "system"
LOCAL_STUBS: frozenset[IPAddress] = frozenset(
    ip_address(a) for a in ("127.0.0.53", "127.0.0.54", "127.0.0.1", "::1")
)
_FILE_INTERVAL = 1.0
_BUS_INTERVAL = 5.0
_MAX_SERVERS = 256  # per source: a file or a bus reply names a few, not thousands


def parse_resolv_conf(text: str) -> frozenset[IPAddress]:
    """The `nameserver` addresses of a resolv.conf (a scope `%eth0` is dropped: answers carry
    none); other lines and bad addresses are skipped, as the C library skips them."""
    found: set[IPAddress] = set()
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            with contextlib.suppress(ValueError):
                found.add(ip_address(words[1].partition("%")[0]))
        if len(found) >= _MAX_SERVERS:
            break
    return frozenset(found)


def parse_resolved_servers(servers: Iterable[Any]) -> frozenset[IPAddress]:
    """systemd-resolved's `DNS` (a(iiay): ifindex, family, address) or `DNSEx` (a(iiayqs): the
    same, then port and server name) property → addresses."""
    found: set[IPAddress] = set()
    for server in servers:
        family, raw = server[1], bytes(server[2])
        if family == 2 and len(raw) == 4:
            found.add(IPv4Address(raw))
        elif family == 10 and len(raw) == 16:
            found.add(IPv6Address(raw))
        if len(found) >= _MAX_SERVERS:
            break
    return frozenset(found)


def parse_nm_configuration(configuration: Iterable[Any]) -> frozenset[IPAddress]:
    """NetworkManager's `DnsManager.Configuration` (aa{sv}, each with "nameservers": as)."""
    found: set[IPAddress] = set()
    for item in configuration:
        servers = item.get("nameservers")
        for text in getattr(servers, "value", ()):
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                found.add(ip_address(text.partition("%")[0]))
        if len(found) >= _MAX_SERVERS:
            break
    return frozenset(found)


@dataclass(frozen=True, slots=True)
class _BusSource:
    name: str
    path: str
    interface: str
    properties: tuple[str, ...]


_RESOLVED = _BusSource(
    "org.freedesktop.resolve1",
    "/org/freedesktop/resolve1",
    "org.freedesktop.resolve1.Manager",
    ("DNS", "FallbackDNS"),
)
_NETWORK_MANAGER = _BusSource(
    "org.freedesktop.NetworkManager",
    "/org/freedesktop/NetworkManager/DnsManager",
    "org.freedesktop.NetworkManager.DnsManager",
    ("Configuration",),
)


class Resolvers:
    """Which addresses are resolvers, from the config and the system's sources."""

    def __init__(self, configured: tuple[str, ...], resolv_conf: str) -> None:
        self._sources: dict[str, frozenset[IPAddress]] = {}
        self._stamp: tuple[int, ...] | None = None
        self.addresses: frozenset[IPAddress] = frozenset()
        self.configure(configured, resolv_conf)

    def configure(self, configured: tuple[str, ...], resolv_conf: str) -> None:
        """Apply `dns_resolvers` and `resolv_conf` (at start and on reload; the file is read
        here, once, then followed by `follow`)."""
        self.system = SYSTEM in configured
        self.resolv_conf = resolv_conf
        self._sources["config"] = frozenset(ip_address(a) for a in configured if a != SYSTEM)
        self._sources["stubs"] = LOCAL_STUBS if self.system else frozenset()
        if not self.system:
            for source in ("file", _RESOLVED.name, _NETWORK_MANAGER.name):
                self._sources.pop(source, None)
        self._stamp = None
        self.check_file()
        self._update()

    def trusts(self, address: IPAddress) -> bool:
        """Whether answers from `address` may name addresses (the packet loop's check)."""
        return address in self.addresses

    def check_file(self) -> bool:
        """Re-read `resolv_conf` if it changed since the last look (a stat, and a read only on a
        change); blocking: call from a worker thread once running. True if the set changed."""
        if not self.system:
            return False
        try:
            st = os.stat(self.resolv_conf)
        except OSError as exc:
            stamp: tuple[int, ...] = (-1, exc.errno or 0)
            found: frozenset[IPAddress] = frozenset()
            if stamp != self._stamp:
                log.warning(
                    "cannot read resolv.conf %s: %s (answers of the servers it would name are "
                    "not believed; set resolv_conf or dns_resolvers)",
                    self.resolv_conf,
                    exc.strerror,
                )
        else:
            stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp == self._stamp:
                return False
            try:
                with open(self.resolv_conf, encoding="utf-8", errors="replace") as f:
                    found = parse_resolv_conf(f.read(1 << 20))
            except OSError as exc:
                log.warning("cannot read resolv.conf %s: %s", self.resolv_conf, exc.strerror)
                found = frozenset()
        self._stamp = stamp
        return self._set("file", found)

    def _set(self, source: str, found: frozenset[IPAddress]) -> bool:
        if self._sources.get(source, frozenset()) == found:
            return False
        self._sources[source] = found
        self._update()
        log.info("dns resolvers from %s: %s", source, " ".join(sorted(map(str, found))) or "(none)")
        return True

    def _update(self) -> None:
        self.addresses = frozenset().union(*self._sources.values())

    async def follow(self) -> None:
        """Follow the file and the bus for as long as snitchd runs (a task of `main`)."""
        bus: MessageBus | None = None
        last_bus = -_BUS_INTERVAL
        loop = asyncio.get_running_loop()
        try:
            while True:
                await asyncio.to_thread(self.check_file)
                if self.system and loop.time() - last_bus >= _BUS_INTERVAL:
                    last_bus = loop.time()
                    if bus is None or not bus.connected:
                        bus = await _connect()
                    if bus is not None:
                        for source in (_RESOLVED, _NETWORK_MANAGER):
                            await self._ask(bus, source)
                await asyncio.sleep(_FILE_INTERVAL)
        finally:
            if bus is not None:
                bus.disconnect()

    async def _ask(self, bus: MessageBus, source: _BusSource) -> None:
        found: set[IPAddress] = set()
        for prop in source.properties:
            value = await _get_property(bus, source, prop)
            if value is None:
                break  # not running (or not answering): this source names nothing now
            if source is _RESOLVED:
                found |= parse_resolved_servers(value)
            else:
                found |= parse_nm_configuration(value)
        self._set(source.name, frozenset(found))


async def _connect() -> MessageBus | None:
    try:
        return await MessageBus(bus_type=BusType.SYSTEM).connect()
    except Exception as exc:  # no bus: only the file and the config name resolvers
        log.info("no system bus for resolver discovery: %s", exc)
        return None


async def _get_property(bus: MessageBus, source: _BusSource, prop: str) -> Any:
    """One property, or None when the service is not there; never starts it (NO_AUTOSTART)."""
    message = Message(
        destination=source.name,
        path=source.path,
        interface="org.freedesktop.DBus.Properties",
        member="Get",
        signature="ss",
        body=[source.interface, prop],
        flags=MessageFlag.NO_AUTOSTART,
    )
    try:
        reply = await asyncio.wait_for(bus.call(message), 5)
    except (TimeoutError, Exception) as exc:
        log.debug("resolver source %s not read: %s", source.name, exc)
        return None
    if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
        return None
    return reply.body[0].value
