"""DNS packets → who asked what, and which names each answer gives: a side path beside `packet`.

snitchd copies DNS to a second NFQUEUE with the whole payload: the queries this machine sends
(UDP or TCP to port 53, as they leave) and the answers it receives (from port 53, on any
interface, `lo` included for a stub resolver such as systemd-resolved on 127.0.0.53).
`read_dns_packet` turns one such packet into a `DnsPacket`: its addresses and ports, and per DNS
message its id, its question and, for an answer, the `Resolution`s it gives. Whether an answer
is believed is decided elsewhere (`dnswatch`: from one of the system's resolvers, replying to a
query this machine sent); the names it gives are kept by `names.NameCache`.

The IP header is read by `ipwire` as in `packet`, UDP and TCP with `struct`, the DNS message
itself by dnspython. Nothing here does I/O or reads the clock, and `read_dns_packet` raises
nothing but `PacketError`, whatever the bytes: the answers come from the network.

What cannot be seen, and what snitch then shows: names resolved over DNS over HTTPS or TLS
(browsers' built-in DoH, port 443/853), inside a VPN or tunnel whose answers never cross this
namespace's netfilter hooks unencrypted, or without DNS at all (`/etc/hosts`, NSS modules,
hard-coded addresses); TCP answers split over several segments (only a message wholly inside one
segment is read) and IP fragments (conntrack, where loaded, reassembles them before the queue).
For those flows snitch knows the address only: the log and prompts show the bare IP, host and
domain rules (`to=NAME`, `to=*.DOMAIN`) do not match them, and an IP or network rule
(`to=203.0.113.7`, `to=203.0.113.0/24`) is what works.

Within one answer, a name is only attached to an address reached from a question of the same
answer (its CNAME chain, then A/AAAA), so a server cannot name addresses nobody asked about.
"""

from __future__ import annotations

import math
import struct
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
from snitch_common.records import IPAddress, Proto
from snitchd.ipwire import read_ip

__all__ = [
    "MAX_ANSWER_BYTES",
    "DnsMessage",
    "DnsPacket",
    "Question",
    "Resolution",
    "parse_dns_packet",
    "read_dns_packet",
]

_DNS_PORT = 53
# The largest answer whose records are read (`_worth_reading`): a UDP answer is at most 4096
# bytes with the usual EDNS size (1232 is common), enough for ~250 addresses.
MAX_ANSWER_BYTES = 4096
_ADDRESS_TYPES = frozenset((int(dns.rdatatype.A), int(dns.rdatatype.AAAA)))
_UDP, _TCP = 17, 6
_HEADER = struct.Struct("!HH")
_UDP_HEADER = struct.Struct("!HHH")
_LENGTH = struct.Struct("!H")
_MAX_HOPS = 16  # CNAMEs followed from one question; dnspython's resolver allows as many
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


@dataclass(frozen=True, slots=True)
class Question:
    """What a query asked (its first question): the name as `Resolution.names` spells it
    (lowercase: resolvers may randomise the case of a query, RFC draft "0x20"), and its type."""

    name: str
    rdtype: int


@dataclass(frozen=True, slots=True)
class DnsMessage:
    """One DNS message: its id, its first question (None if it has none), and for an answer
    the resolutions it gives (always empty for a query)."""

    id: int
    question: Question | None
    resolutions: tuple[Resolution, ...] = ()


@dataclass(frozen=True, slots=True)
class DnsPacket:
    """One IP packet carrying DNS. `answer`: it comes from port 53 (else it goes to port 53, a
    query). `messages` may be empty: a TCP segment without payload (handshake, acks, FIN)."""

    answer: bool
    proto: Proto
    src: IPAddress
    sport: int
    dst: IPAddress
    dport: int
    messages: tuple[DnsMessage, ...]


def read_dns_packet(packet: bytes, *, answer: bool = True, addresses: bool = True) -> DnsPacket:
    """A whole IP packet (IPv4 or IPv6, UDP or TCP, as the queue hands it) → `DnsPacket`.

    `answer`: read an answer (from port 53, QR set) or a query (to port 53, QR clear). Raises
    `PacketError` for anything malformed or not of that kind (another port, a fragment, a TCP
    message not wholly in this segment, a query where an answer was expected and the reverse);
    never any other exception. A well-formed answer that resolves nothing has messages without
    resolutions: NXDOMAIN, SERVFAIL and any other rcode but NOERROR, an empty (NODATA) answer, a
    CNAME loop or a chain longer than 16 CNAMEs.

    The records are read only where they can name an address (`_worth_reading`), and not at all
    when `addresses` is False (an answer nobody asked, or from a server the machine does not
    use): this runs on the packet loop, and dnspython spends ~230 ms on 64 KiB of hostile
    records that a host on the network may send 50 times a second.
    """
    ip = read_ip(packet)
    if ip.length < ip.offset or ip.length > len(packet):
        raise PacketError(f"truncated IP packet: {len(packet)} bytes, length {ip.length}")
    if ip.fragmented:
        v = ip.dst.version
        raise PacketError(f"IPv{v} fragment: DNS answers are read whole")
    ipproto, sport, dport, payload = _transport(packet, ip.offset, ip.length, ip.ipproto)
    if (sport if answer else dport) != _DNS_PORT:
        if answer:
            raise PacketError(f"not a DNS answer: source port {sport}")
        raise PacketError(f"not a DNS query: destination port {dport}")
    wires = [payload] if ipproto == _UDP else _tcp_messages(payload)
    messages = tuple(_read_message(wire, answer, addresses) for wire in wires)
    proto = Proto.UDP if ipproto == _UDP else Proto.TCP
    return DnsPacket(answer, proto, ip.src, sport, ip.dst, dport, messages)


def parse_dns_packet(packet: bytes) -> list[Resolution]:
    """The resolutions of an answer packet (`read_dns_packet`), all messages together."""
    found = read_dns_packet(packet)
    return [r for message in found.messages for r in message.resolutions]


def _read_message(wire: bytes, answer: bool, addresses: bool) -> DnsMessage:
    head = _message(wire, answer, question_only=True)
    question = None
    if head.question:
        first = head.question[0]
        question = Question(_text(first.name), int(first.rdtype))
    resolutions: tuple[Resolution, ...] = ()
    if answer and addresses and question is not None and _worth_reading(wire, question):
        resolutions = tuple(_resolutions(_message(wire, answer)))
    return DnsMessage(head.id, question, resolutions)


def _worth_reading(wire: bytes, question: Question) -> bool:
    """Whether an answer's records are read: only for a question of addresses (A, AAAA: what
    names flows; a CNAME chain ends in them), of at most MAX_ANSWER_BYTES. A bigger one names
    no address here: its flows go unnamed (host rules do not match them), never named wrongly."""
    return question.rdtype in _ADDRESS_TYPES and len(wire) <= MAX_ANSWER_BYTES


def _transport(data: bytes, off: int, end: int, ipproto: int) -> tuple[int, int, int, bytes]:
    """Protocol, ports and the transport payload between `off` and `end` (the IP packet's own
    end, not the buffer's)."""
    if ipproto == _UDP:
        if off + 8 > end:
            raise PacketError(f"truncated udp header: {max(end - off, 0)} bytes")
        sport, dport, length = _UDP_HEADER.unpack_from(data, off)
        if length < 8 or off + length > end:
            raise PacketError(f"bad udp length {length}: {end - off} bytes in the packet")
        start, end = off + 8, off + length
    elif ipproto == _TCP:
        if off + 20 > end:
            raise PacketError(f"truncated tcp header: {max(end - off, 0)} bytes")
        sport, dport = _HEADER.unpack_from(data, off)
        doff = (data[off + 12] >> 4) * 4
        if doff < 20 or off + doff > end:
            raise PacketError(f"bad tcp data offset {doff}: {end - off} bytes in the packet")
        start = off + doff
    else:
        raise PacketError(f"not udp or tcp: ip protocol {ipproto}")
    return ipproto, sport, dport, data[start:end]


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


def _message(wire: bytes, answer: bool, question_only: bool = False) -> dns.message.Message:
    if len(wire) < 12:
        raise PacketError(f"truncated DNS header: {len(wire)} bytes")
    flags = _LENGTH.unpack_from(wire, 2)[0]
    if answer and not flags & dns.flags.QR:
        raise PacketError("not a DNS response: QR bit clear (a query)")
    if not answer and flags & dns.flags.QR:
        raise PacketError("not a DNS query: QR bit set (a response)")
    opcode = dns.opcode.from_flags(flags)
    if opcode != dns.opcode.QUERY:
        raise PacketError(f"not a DNS query or its response: opcode {dns.opcode.to_text(opcode)}")
    try:
        # keyring=False: a TSIG-signed answer is read, not verified (we hold no keys). A query
        # is read up to its question only: that is all a query is matched by.
        return dns.message.from_wire(wire, keyring=False, question_only=question_only or not answer)
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
