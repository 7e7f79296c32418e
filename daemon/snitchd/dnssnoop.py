"""DNS packets → who asked what, and which names each answer gives: a side path beside `packet`.

snitchd copies DNS to a second NFQUEUE with the whole payload: the queries this machine sends
(UDP or TCP to port 53, as they leave) and the answers it receives (from port 53, on any
interface, `lo` included for a stub resolver such as systemd-resolved on 127.0.0.53).
`read_dns_packet` turns one such packet into a `DnsPacket`: its addresses and ports, and per DNS
message its id, its question and, for an answer, the `Resolution`s it gives. Whether an answer
is believed is decided elsewhere (`dnswatch`: from one of the system's resolvers, replying to a
query this machine sent); the names it gives are kept by `names.NameCache`.

The IP header is read by `ipwire` as in `packet`, UDP and TCP with `struct`, and so is the DNS
message: its header and questions (`_head`) and, where they are read, an answer's records
(`_Answer`). dnspython read them until it was measured on the packet loop, two to ten times
slower (`_resolutions`, bench/bench_dns.py); it still spells names (`_text`) and names the
constants, and tests check the readers against it. Nothing here does I/O or reads the clock,
and `read_dns_packet` raises nothing but `PacketError`, whatever the bytes: the answers come
from the network.

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
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype

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
_UDP, _TCP = 17, 6
_HEADER = struct.Struct("!HH")
_UDP_HEADER = struct.Struct("!HHH")
_LENGTH = struct.Struct("!H")
_MAX_HOPS = 16  # CNAMEs followed from one question; dnspython's resolver allows as many
_HEADER_BYTES = 12
_ID_FLAGS_COUNT = struct.Struct("!HHH")  # ID, flags, QDCOUNT
_COUNTS = struct.Struct("!HH")  # a question's TYPE and CLASS
_RR = struct.Struct("!HHIH")  # TYPE, CLASS, TTL, RDLENGTH after a record's name
_TYPE_A, _TYPE_AAAA = int(dns.rdatatype.A), int(dns.rdatatype.AAAA)
_TYPE_CNAME = int(dns.rdatatype.CNAME)
_ADDRESS_TYPES = frozenset((_TYPE_A, _TYPE_AAAA))
_CLASS_IN = int(dns.rdataclass.IN)
_MAX_NAME_BYTES = 255  # RFC 1035 §2.3.4, in wire form
_MAX_POINTERS = 32  # per name: real names take one or two; hostile chains cost no more
_MAX_QUESTIONS = 4  # per message: one in practice
# Messages read from one TCP segment (RFC 7766 lets a client send several at once); a user's
# program may fill a segment with empty ones, each a parse on the packet loop.
_MAX_TCP_MESSAGES = 16
_Labels = tuple[bytes, ...]
_Question = tuple[_Labels, int, int]  # name, TYPE, CLASS


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
    names = _Names(wire)
    ident, questions, off = _head(wire, answer, names)
    question = None
    if questions:
        first, qtype, _ = questions[0]
        question = Question(names.text(first), qtype)
    resolutions: tuple[Resolution, ...] = ()
    if answer and addresses and question is not None and _worth_reading(wire, question):
        resolutions = tuple(_resolutions(wire, names, questions, off))
    return DnsMessage(ident, question, resolutions)


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
    may hold several (RFC 7766 §6.2.1.1): the first `_MAX_TCP_MESSAGES` are read, the rest of
    the segment is not. Segments are not reassembled here."""
    messages: list[bytes] = []
    off = 0
    while off < len(payload) and len(messages) < _MAX_TCP_MESSAGES:
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


def _head(wire: bytes, answer: bool, names: _Names) -> tuple[int, list[_Question], int]:
    """The message's id and questions (name, type, class), and where its answer section starts;
    raises PacketError unless it is a standard query (`answer` False) or its response. Read
    with `struct`, as the answer's records are (`_resolutions`): dnspython took ~70 µs for
    this alone, for every DNS packet either way, on the packet loop."""
    if len(wire) < _HEADER_BYTES:
        raise PacketError(f"truncated DNS header: {len(wire)} bytes")
    ident, flags, qdcount = _ID_FLAGS_COUNT.unpack_from(wire)
    if answer and not flags & dns.flags.QR:
        raise PacketError("not a DNS response: QR bit clear (a query)")
    if not answer and flags & dns.flags.QR:
        raise PacketError("not a DNS query: QR bit set (a response)")
    opcode = dns.opcode.from_flags(flags)
    if opcode != dns.opcode.QUERY:
        raise PacketError(f"not a DNS query or its response: opcode {dns.opcode.to_text(opcode)}")
    if qdcount > _MAX_QUESTIONS:
        # Servers refuse more than one (RFC 9619); reading thousands costs the loop.
        raise PacketError(f"{qdcount} questions in one DNS message: at most {_MAX_QUESTIONS}")
    questions: list[_Question] = []
    off = _HEADER_BYTES
    for _ in range(qdcount):
        name, off = names.read(off)
        if off + 4 > len(wire):
            raise PacketError("truncated DNS question")
        qtype, qclass = _COUNTS.unpack_from(wire, off)
        questions.append((name, qtype, qclass))
        off += 4
    return ident, questions, off


def _text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


def _resolutions(
    wire: bytes, names: _Names, questions: list[_Question], off: int
) -> list[Resolution]:
    """Follow each question through the answer's CNAMEs to its A/AAAA records.

    The answer section is read here with `struct` (`_Answer`), not by dnspython, which took
    16-22 ms for a 4 KiB answer of 252 addresses, on the packet loop, for an answer any user
    can have their own domain's server send through the system's resolver as often as they
    look it up; this takes 1.5 ms (bench/bench_dns.py). Only what names an address is read:
    the rest of the message is not looked at (`_head` has read its header and questions)."""
    if wire[3] & 0x0F != dns.rcode.NOERROR:
        return []
    found = _Answer(wire, names, off)
    if not found.addresses:
        return []
    result: list[Resolution] = []
    for question, _, qclass in questions:
        if qclass != _CLASS_IN:
            continue
        name = question
        chain, seen, ttl = [names.text(name)], {name}, math.inf
        for hop in range(_MAX_HOPS + 1):
            rrsets = found.addresses.get(name)
            if rrsets:
                spelt = tuple(chain)
                for rdtype, addresses in rrsets.items():
                    least = int(min(ttl, found.ttls[(name, rdtype)]))
                    result.extend(Resolution(spelt, address, least) for address in addresses)
                break
            target = found.cnames.get(name)
            if target is None or hop == _MAX_HOPS or target in seen:
                break  # no answer, chain too long, or a CNAME loop: this question names nothing
            ttl = min(ttl, found.ttls[(name, _TYPE_CNAME)])
            name = target
            seen.add(name)
            chain.append(names.text(name))
    return result


class _Answer:
    """What an answer section says, read from its wire form from `off`: each name's CNAME
    target and addresses (class IN), and each RRset's TTL (its records' smallest). A name has
    one CNAME (RFC 2181 §10.1): of several, the last counts, as when dnspython read answers. A
    record of another type or class, or an A or AAAA of the wrong length, is skipped."""

    def __init__(self, wire: bytes, names: _Names, off: int) -> None:
        self.names = names
        self.cnames: dict[_Labels, _Labels] = {}
        # a name → its A and AAAA RRsets, in the order each first came (as dnspython gave them)
        self.addresses: dict[_Labels, dict[int, dict[IPv4Address | IPv6Address, None]]] = {}
        self.ttls: dict[tuple[_Labels, int], int] = {}
        for _ in range(_LENGTH.unpack_from(wire, 6)[0]):  # ANCOUNT
            off = self._record(wire, off)

    def _record(self, wire: bytes, off: int) -> int:
        owner, off = self.names.read(off)
        if off + _RR.size > len(wire):
            raise PacketError("truncated DNS record")
        rdtype, rdclass, ttl, rdlength = _RR.unpack_from(wire, off)
        off += _RR.size
        end: int = off + rdlength
        if end > len(wire):
            raise PacketError(f"truncated DNS record data: {rdlength} bytes")
        if rdclass != _CLASS_IN:
            return end
        if rdtype == _TYPE_A and rdlength == 4:
            rrset = self.addresses.setdefault(owner, {}).setdefault(rdtype, {})
            rrset[IPv4Address(wire[off:end])] = None
        elif rdtype == _TYPE_AAAA and rdlength == 16:
            rrset = self.addresses.setdefault(owner, {}).setdefault(rdtype, {})
            rrset[IPv6Address(wire[off:end])] = None
        elif rdtype == _TYPE_CNAME:
            target, after = self.names.read(off)
            if after != end:
                raise PacketError("malformed CNAME record: its name is not its whole data")
            self.cnames[owner] = target
        else:
            return end
        key = (owner, rdtype)
        self.ttls[key] = min(self.ttls.get(key, ttl), ttl)
        return end


class _Names:
    """The domain names of one DNS message, read from its wire form (RFC 1035 §4.1.4): a name
    is labels, then a zero byte or a pointer to a name earlier in the message. Pointers must
    point backwards, so no name loops; what a pointer leads to is read once (the records of an
    answer point at the same few names). Names compare as DNS does, ignoring ASCII case."""

    def __init__(self, wire: bytes) -> None:
        self._wire = wire
        # where a pointer led → the name's labels from there (lowercase), and their size
        self._at: dict[int, tuple[_Labels, int]] = {}
        self._spelt: dict[_Labels, str] = {}

    def read(self, off: int) -> tuple[_Labels, int]:
        """The name at `off`, and where what follows it starts."""
        wire, size = self._wire, 1  # its size in wire form, without pointers
        labels: list[bytes] = []
        starts = [(off, 0, 0)]  # where each part began: offset, first label's index, size then
        after = -1
        while True:
            if off >= len(wire):
                raise PacketError("truncated DNS name")
            length = wire[off]
            if length & 0xC0 == 0xC0:
                if off + 1 >= len(wire):
                    raise PacketError("truncated DNS name pointer")
                pointer = (length & 0x3F) << 8 | wire[off + 1]
                if pointer >= starts[-1][0] or len(starts) > _MAX_POINTERS:
                    raise PacketError("DNS name pointer that does not point backwards")
                if after < 0:
                    after = off + 2
                off = pointer
                known = self._at.get(off)
                if known is not None:
                    labels.extend(known[0])
                    size += known[1] - 1
                    break
                starts.append((off, len(labels), size - 1))
                continue
            if length & 0xC0:
                raise PacketError(f"unknown DNS label type {length >> 6}")
            if length == 0:
                if after < 0:
                    after = off + 1
                break
            label = wire[off + 1 : off + 1 + length]
            if len(label) < length:
                raise PacketError("truncated DNS label")
            size += 1 + length
            if size > _MAX_NAME_BYTES:
                raise PacketError("DNS name longer than 255 bytes")
            labels.append(label.lower())
            off += 1 + length
        if size > _MAX_NAME_BYTES:
            raise PacketError("DNS name longer than 255 bytes")
        for start, first, before in starts[1:]:
            self._at[start] = (tuple(labels[first:]), size - before)
        return tuple(labels), after

    def text(self, name: _Labels) -> str:
        """As `Resolution.names` spells names (dnspython's text form)."""
        spelt = self._spelt.get(name)
        if spelt is None:
            spelt = self._spelt[name] = _text(dns.name.Name((*name, b"")))
        return spelt
