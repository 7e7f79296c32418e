"""DNS answers → which names each address was resolved from: a side path beside `packet`.

snitchd queues every DNS answer the machine receives (UDP or TCP from port 53, on any interface,
`lo` included for a stub resolver such as systemd-resolved on 127.0.0.53) on a second NFQUEUE
with the whole payload. `parse_dns_packet` turns one such packet into `Resolution`s, and
`NameCache` keeps them until their TTL (plus a grace period) runs out, so that a rule can say
`to=api.example.org` or `to=*.example.org` and the log can show `api.example.org (203.0.113.7)`.
The IP header is read by `ipwire` as in `packet`, UDP and TCP with `struct`, the DNS message
itself by dnspython. Nothing here does I/O or reads the clock (`now` is passed in), and
`parse_dns_packet` raises nothing but `PacketError`, whatever the bytes: the answers come from
the network. The queue reader should accept an answer only after `learn`, so no program can
connect to an address before its names are known.

What cannot be seen, and what snitch then shows: names resolved over DNS over HTTPS or TLS
(browsers' built-in DoH, port 443/853), inside a VPN or tunnel whose answers never cross this
namespace's netfilter hooks unencrypted, or without DNS at all (`/etc/hosts`, NSS modules,
hard-coded addresses); TCP answers split over several segments (only a message wholly inside one
segment is read) and IP fragments (conntrack, where loaded, reassembles them before the queue).
For those flows snitch knows the address only: the log and prompts show the bare IP, host and
domain rules (`to=NAME`, `to=*.DOMAIN`) do not match them, and an IP or network rule
(`to=203.0.113.7`, `to=203.0.113.0/24`) is what works.

Trust: a name is only attached to an address reached from a question of the same answer (its
CNAME chain, then A/AAAA), so a server cannot name addresses nobody asked about. It can still
claim any address for the names it is asked, and any program that may send DNS to a server of
its choosing can make an address look like any name; to narrow that, queue only answers from the
system's resolvers.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA

from snitch_common.errors import PacketError
from snitchd.ipwire import read_ip

__all__ = ["NameCache", "Resolution", "parse_dns_packet"]

_DNS_PORT = 53
_UDP, _TCP = 17, 6
_HEADER = struct.Struct("!HH")
_UDP_HEADER = struct.Struct("!HHH")
_LENGTH = struct.Struct("!H")
_MAX_HOPS = 16  # CNAMEs followed from one question; dnspython's resolver allows as many
_MAX_NAMES = 32  # names kept per address
_SWEEP = 8  # fully expired addresses dropped from the oldest end per `learn`
_EMPTY: frozenset[str] = frozenset()
_A, _AAAA = dns.rdtypes.IN.A.A, dns.rdtypes.IN.AAAA.AAAA


@dataclass(frozen=True, slots=True)
class Resolution:
    """One address an answer gave for one question.

    `names` is the queried name, then each CNAME target in chain order: lowercase, ASCII
    (IDNs as `xn--` A-labels; unprintable bytes escaped as `\\DDD`), no trailing dot. `ttl` is
    the smallest TTL along the chain, in seconds.
    """

    names: tuple[str, ...]
    address: IPv4Address | IPv6Address
    ttl: int


def parse_dns_packet(packet: bytes) -> list[Resolution]:
    """A whole IP packet (IPv4 or IPv6, UDP or TCP, as the queue hands it) → resolutions.

    Raises `PacketError` for anything malformed or that is not a DNS response (a query, another
    port, a fragment, a TCP message not wholly in this segment); never any other exception.
    A well-formed response that resolves nothing returns `[]`: NXDOMAIN, SERVFAIL and any other
    rcode but NOERROR, an empty (NODATA) answer, a CNAME loop or a chain longer than 16 CNAMEs,
    and a TCP segment without payload (the handshake, acks and FIN of a DNS connection).
    """
    ipproto, payload = _transport_payload(packet)
    if ipproto == _UDP:
        return _resolutions(_message(payload))
    result: list[Resolution] = []
    for wire in _tcp_messages(payload):
        result.extend(_resolutions(_message(wire)))
    return result


def _transport_payload(data: bytes) -> tuple[int, bytes]:
    ip = read_ip(data)
    if ip.length < ip.offset or ip.length > len(data):
        raise PacketError(f"truncated IP packet: {len(data)} bytes, length {ip.length}")
    if ip.fragmented:
        v = ip.dst.version
        raise PacketError(f"IPv{v} fragment: DNS answers are read whole")
    return _transport(data, ip.offset, ip.length, ip.ipproto)


def _transport(data: bytes, off: int, end: int, ipproto: int) -> tuple[int, bytes]:
    """The transport payload between `off` and `end` (the IP packet's own end, not the
    buffer's), checked to come from port 53."""
    if ipproto == _UDP:
        if off + 8 > end:
            raise PacketError(f"truncated udp header: {max(end - off, 0)} bytes")
        sport, _, length = _UDP_HEADER.unpack_from(data, off)
        if length < 8 or off + length > end:
            raise PacketError(f"bad udp length {length}: {end - off} bytes in the packet")
        start, end = off + 8, off + length
    elif ipproto == _TCP:
        if off + 20 > end:
            raise PacketError(f"truncated tcp header: {max(end - off, 0)} bytes")
        sport = _HEADER.unpack_from(data, off)[0]
        doff = (data[off + 12] >> 4) * 4
        if doff < 20 or off + doff > end:
            raise PacketError(f"bad tcp data offset {doff}: {end - off} bytes in the packet")
        start = off + doff
    else:
        raise PacketError(f"not udp or tcp: ip protocol {ipproto}")
    if sport != _DNS_PORT:
        raise PacketError(f"not a DNS answer: source port {sport}")
    return ipproto, data[start:end]


def _tcp_messages(payload: bytes) -> list[bytes]:
    """DNS over TCP prefixes each message with its 2-byte length (RFC 1035 §4.2.2); a segment
    may hold several (RFC 7766 §6.2.1.1). Segments are not reassembled here."""
    messages: list[bytes] = []
    off = 0
    while off < len(payload):
        if off + 2 > len(payload):
            raise PacketError("partial TCP DNS message: length prefix split")
        size = _LENGTH.unpack_from(payload, off)[0]
        if off + 2 + size > len(payload):
            raise PacketError(
                f"partial TCP DNS message: {size} bytes, {len(payload) - off - 2} in this segment"
            )
        messages.append(payload[off + 2 : off + 2 + size])
        off += 2 + size
    return messages


def _message(wire: bytes) -> dns.message.Message:
    if len(wire) < 12:
        raise PacketError(f"truncated DNS header: {len(wire)} bytes")
    flags = _LENGTH.unpack_from(wire, 2)[0]
    if not flags & dns.flags.QR:
        raise PacketError("not a DNS response: QR bit clear (a query)")
    opcode = dns.opcode.from_flags(flags)
    if opcode != dns.opcode.QUERY:
        raise PacketError(f"not a DNS query response: opcode {dns.opcode.to_text(opcode)}")
    try:
        # keyring=False: a TSIG-signed answer is read, not verified (we hold no keys).
        return dns.message.from_wire(wire, keyring=False)
    except Exception as exc:
        # dnspython raises DNSException subclasses and wraps whatever its rdata parsers raise
        # in FormError (dns.exception.ExceptionWrapper): 500,000 fuzzed answers over every
        # rdata type raised nothing else (dnspython 2.9). Anything else is caught all the same:
        # a dnspython bug met on hostile bytes must cost one packet, not the queue reader.
        raise PacketError(f"malformed DNS answer: {exc.__class__.__name__}: {exc}") from exc


def _text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


def _resolutions(message: dns.message.Message) -> list[Resolution]:
    """Follow each question through the answer's CNAMEs to its A/AAAA records."""
    if message.rcode() != dns.rcode.NOERROR:
        return []
    cnames: dict[dns.name.Name, tuple[dns.name.Name, int]] = {}
    addresses: dict[dns.name.Name, list[tuple[IPv4Address | IPv6Address, int]]] = {}
    for rrset in message.answer:
        if rrset.rdclass != dns.rdataclass.IN or not rrset:
            continue
        found: list[tuple[IPv4Address | IPv6Address, int]]
        if rrset.rdtype == dns.rdatatype.A:
            found = [(IPv4Address(r.address), rrset.ttl) for r in rrset if isinstance(r, _A)]
        elif rrset.rdtype == dns.rdatatype.AAAA:
            found = [(IPv6Address(r.address), rrset.ttl) for r in rrset if isinstance(r, _AAAA)]
        elif rrset.rdtype == dns.rdatatype.CNAME:
            # A name has one CNAME (RFC 2181 §10.1); keep the first if a server sent more.
            target = next(iter(rrset))
            if isinstance(target, dns.rdtypes.ANY.CNAME.CNAME):
                cnames.setdefault(rrset.name, (target.target, rrset.ttl))
            continue
        else:
            continue
        addresses.setdefault(rrset.name, []).extend(found)
    if not addresses:
        return []
    result: list[Resolution] = []
    for question in message.question:
        if question.rdclass != dns.rdataclass.IN:
            continue
        name = question.name
        chain, seen, ttl = [_text(name)], {name}, math.inf
        for hop in range(_MAX_HOPS + 1):
            hits = addresses.get(name)
            if hits:
                names = tuple(chain)
                result.extend(Resolution(names, a, int(min(ttl, t))) for a, t in hits)
                break
            link = cnames.get(name)
            if link is None or hop == _MAX_HOPS or link[0] in seen:
                break  # no answer, chain too long, or a CNAME loop: this question names nothing
            name, ttl = link[0], min(ttl, link[1])
            seen.add(name)
            chain.append(_text(name))
    return result


class _Entry:
    """The names of one address, each with the time it expires."""

    __slots__ = ("frozen", "last", "names", "queried", "until")

    def __init__(self) -> None:
        self.names: dict[str, float] = {}  # name → expires at, least recently learnt first
        self.queried: list[str] = []  # names that began a chain (for `best`), likewise
        # What `names()` returns until `until`, built on the first lookup: many addresses
        # learnt are never connected to (the other A records, AAAA on an IPv4-only host).
        self.frozen: frozenset[str] | None = None
        self.until = math.inf  # when the first name expires
        self.last = -math.inf  # when the last name expires

    def add(self, names: tuple[str, ...], expires: float) -> None:
        for name in names:
            old = self.names.pop(name, None)  # re-inserted: now the most recently learnt
            self.names[name] = expires if old is None else max(old, expires)
        if names:
            if names[0] in self.queried:
                self.queried.remove(names[0])
            self.queried.append(names[0])
        while len(self.names) > _MAX_NAMES:
            oldest = next(iter(self.names))
            del self.names[oldest]
            if oldest in self.queried:
                self.queried.remove(oldest)
        self._refresh()

    def prune(self, now: float) -> None:
        self.names = {n: e for n, e in self.names.items() if e > now}
        self.queried = [n for n in self.queried if n in self.names]
        self._refresh()

    def _refresh(self) -> None:
        self.frozen = None if self.names else _EMPTY
        self.until = min(self.names.values(), default=math.inf)
        self.last = max(self.names.values(), default=-math.inf)


class NameCache:
    """Address → the names it was resolved from, each kept for its TTL plus `grace` seconds.

    `grace` covers programs that connect a little after the TTL ran out (TTL 0 answers, slow
    starts, long-lived resolver caches). Memory is bounded: at most `max_addresses` addresses
    (the least recently learnt go first) and 32 names per address (likewise). Expired names are
    dropped lazily, on lookup and on `learn`; `len()` may count addresses not yet dropped.
    """

    def __init__(self, grace: float = 60.0, max_addresses: int = 100_000) -> None:
        if grace < 0 or max_addresses < 1:
            raise ValueError(f"NameCache: grace {grace} < 0 or max_addresses {max_addresses} < 1")
        self._grace = grace
        self._max_addresses = max_addresses
        self._entries: dict[IPv4Address | IPv6Address, _Entry] = {}  # least recently learnt first

    def learn(self, resolutions: Iterable[Resolution], now: float) -> None:
        entries = self._entries
        for resolution in resolutions:
            entry = entries.pop(resolution.address, None)
            if entry is None:
                entry = _Entry()
            elif entry.until <= now:
                entry.prune(now)
            entry.add(resolution.names, now + resolution.ttl + self._grace)
            entries[resolution.address] = entry
        for _ in range(_SWEEP):
            oldest = next(iter(entries.items()), None)
            if oldest is None or oldest[1].last > now:
                break
            del entries[oldest[0]]
        while len(entries) > self._max_addresses:
            del entries[next(iter(entries))]

    def names(self, address: IPv4Address | IPv6Address, now: float) -> frozenset[str]:
        """Every unexpired name of `address` (empty if none): the packet path's lookup, a dict
        get and a comparison unless something expired since the last call."""
        entry = self._entries.get(address)
        if entry is None:
            return _EMPTY
        if now >= entry.until:
            return self._prune(address, entry, now)
        frozen = entry.frozen
        if frozen is None:
            frozen = entry.frozen = frozenset(entry.names)
        return frozen

    def best(self, address: IPv4Address | IPv6Address, now: float) -> str | None:
        """The name to show for `address`: the queried name (not a CNAME target) most recently
        learnt and not expired, or None."""
        entry = self._entries.get(address)
        if entry is None:
            return None
        if now >= entry.until:
            self._prune(address, entry, now)
        return entry.queried[-1] if entry.queried else None

    def __len__(self) -> int:
        return len(self._entries)

    def _prune(
        self, address: IPv4Address | IPv6Address, entry: _Entry, now: float
    ) -> frozenset[str]:
        entry.prune(now)
        if not entry.names:
            del self._entries[address]
            return _EMPTY
        entry.frozen = frozenset(entry.names)
        return entry.frozen
