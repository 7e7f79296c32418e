"""DNS answers → resolutions → the name cache. The answers are real DNS messages made by
dnspython, wrapped in IPv4/IPv6 and UDP/TCP headers built by hand with `struct`, as the queue
hands them over (IP header first). Checksums are left zero: the kernel checked them before the
queue, and `parse_dns_packet` does not."""

from __future__ import annotations

import itertools
import struct
from ipaddress import IPv4Address, IPv6Address

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snitch_common.errors import PacketError
from snitchd.dnssnoop import (
    MAX_ANSWER_BYTES,
    Question,
    Resolution,
    parse_dns_packet,
    read_dns_packet,
)
from snitchd.names import NameCache
from tests.support import packets
from tests.support.packets import framed

RESOLVER4, CLIENT4 = IPv4Address("127.0.0.53"), IPv4Address("127.0.0.1")
RESOLVER6, CLIENT6 = IPv6Address("2001:db8::53"), IPv6Address("2001:db8::2")
ADDR = IPv4Address("203.0.113.7")
ADDR6 = IPv6Address("2001:db8:1::7")
UDP, TCP = 17, 6


# -- packet builders ------------------------------------------------------------------------


def ipv4(proto: int, payload: bytes, frag: int = 0) -> bytes:
    return packets.ipv4(proto, payload, src=RESOLVER4, dst=CLIENT4, frag=frag)


def ipv6(next_header: int, payload: bytes) -> bytes:
    return packets.ipv6(next_header, payload, src=RESOLVER6, dst=CLIENT6)


def udp(payload: bytes, sport: int = 53, dport: int = 41000) -> bytes:
    return packets.udp(sport, dport, payload)


def tcp(payload: bytes, sport: int = 53, dport: int = 41000, flags: int = 0x18) -> bytes:
    """A 20-byte TCP header (PSH|ACK by default) in front of `payload`."""
    return packets.tcp(sport, dport, payload, flags)


# -- DNS builders ---------------------------------------------------------------------------


def answer(
    qname: str = "api.example.org",
    records: list[tuple[str, int, str, str]] | None = None,
    rdtype: str = "A",
    rcode: dns.rcode.Rcode = dns.rcode.NOERROR,
) -> bytes:
    """A response to `qname`'s query with `records` ((owner, ttl, type, value)) in its answer
    section, in the given order."""
    query = dns.message.make_query(qname, rdtype)
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    if records is None:
        records = [(qname + ".", 300, "A", str(ADDR))]
    for owner, ttl, kind, value in records:
        response.answer.append(dns.rrset.from_text(owner, ttl, "IN", kind, value))
    return response.to_wire()


def typical() -> bytes:
    """www.example.org → cdn.example.net → 203.0.113.7 and .8, as a resolver sends it."""
    return answer(
        "www.example.org",
        [
            ("www.example.org.", 3600, "CNAME", "cdn.example.net."),
            ("cdn.example.net.", 60, "A", "203.0.113.7"),
            ("cdn.example.net.", 60, "A", "203.0.113.8"),
        ],
    )


# -- parse_dns_packet: framing --------------------------------------------------------------


def test_ipv4_udp_a_answer() -> None:
    assert parse_dns_packet(ipv4(UDP, udp(answer()))) == [
        Resolution(("api.example.org",), ADDR, 300)
    ]


def test_ipv6_udp_aaaa_answer() -> None:
    wire = answer(records=[("api.example.org.", 120, "AAAA", str(ADDR6))], rdtype="AAAA")
    assert parse_dns_packet(ipv6(UDP, udp(wire))) == [Resolution(("api.example.org",), ADDR6, 120)]


def test_only_answers_that_can_name_an_address_are_read_whole() -> None:
    """Their records are read on the packet loop: dnspython spent ~230 ms on 64 KiB of
    hostile records. Only a question of addresses, of at most MAX_ANSWER_BYTES, is read past
    its question; and nothing past it where the caller says
    the answer cannot be learnt (unasked, from a server the machine does not use)."""
    many = [("api.example.org.", 300, "A", f"203.0.113.{i % 250 + 1}") for i in range(300)]
    texts = [("api.example.org.", 300, "TXT", " ".join(['""'] * 200))]
    for wire in (
        answer(records=many),  # 300 addresses: 4.8 KiB
        answer(records=texts * 6, rdtype="A"),  # over MAX_ANSWER_BYTES
        answer(records=[("api.example.org.", 300, "A", str(ADDR))], rdtype="TXT"),
    ):
        assert len(wire) > MAX_ANSWER_BYTES or wire[7] > 0  # too big, or not about addresses
        (message,) = read_dns_packet(ipv4(UDP, udp(wire))).messages
        assert message.question is not None and message.question.name == "api.example.org"
        assert message.resolutions == ()
    fits = answer(records=many[:200])
    assert len(read_dns_packet(ipv4(UDP, udp(fits))).messages[0].resolutions) == 200
    unlearnt = read_dns_packet(ipv4(UDP, udp(answer())), addresses=False)
    assert unlearnt.messages[0].resolutions == ()
    assert unlearnt.messages[0].question is not None


def test_ipv4_tcp_answer_behind_its_length_prefix() -> None:
    assert parse_dns_packet(ipv4(TCP, tcp(framed(answer())))) == [
        Resolution(("api.example.org",), ADDR, 300)
    ]


def test_ipv6_tcp_answer() -> None:
    assert parse_dns_packet(ipv6(TCP, tcp(framed(answer())))) == [
        Resolution(("api.example.org",), ADDR, 300)
    ]


def test_two_tcp_messages_in_one_segment_are_both_read() -> None:
    """RFC 7766 lets a server pipeline answers; a segment may carry more than one."""
    second = answer("b.example.org", [("b.example.org.", 30, "A", "198.51.100.1")])
    assert parse_dns_packet(ipv4(TCP, tcp(framed(answer()) + framed(second)))) == [
        Resolution(("api.example.org",), ADDR, 300),
        Resolution(("b.example.org",), IPv4Address("198.51.100.1"), 30),
    ]


def test_a_segment_of_many_messages_is_read_up_to_sixteen() -> None:
    """A program may fill a TCP segment with tiny DNS messages, each a parse on the packet
    loop: the first 16 are read, the rest of the segment is not."""
    query = dns.message.make_query("api.example.org", "A").to_wire()
    packet = ipv4(TCP, tcp(framed(query) * 40, sport=41000, dport=53))
    assert len(read_dns_packet(packet, answer=False).messages) == 16


def test_a_message_of_more_than_four_questions_is_not_read() -> None:
    """A message asks one question in practice; thousands would each be read on the loop."""
    message = dns.message.make_query("api.example.org", "A")
    for i in range(5):
        message.question.append(
            dns.rrset.RRset(dns.name.from_text(f"q{i}.example.org"), 1, dns.rdatatype.A)
        )
    packet = ipv4(UDP, udp(message.to_wire(), sport=41000, dport=53))
    with pytest.raises(PacketError, match="6 questions in one DNS message: at most 4"):
        read_dns_packet(packet, answer=False)


def test_tcp_message_split_over_segments_is_partial() -> None:
    """Segments are not reassembled: the first half of a message says so, not "malformed"."""
    message = framed(typical())
    with pytest.raises(PacketError, match="partial TCP DNS message"):
        parse_dns_packet(ipv4(TCP, tcp(message[:40])))
    with pytest.raises(PacketError, match="partial TCP DNS message"):
        parse_dns_packet(ipv4(TCP, tcp(message[:1])))


def test_tcp_segment_without_payload_resolves_nothing() -> None:
    """The SYN-ACK, ACKs and FIN of a DNS connection reach the queue too; they are no error."""
    assert parse_dns_packet(ipv4(TCP, tcp(b"", flags=0x12))) == []


def test_tcp_options_are_skipped() -> None:
    options = b"\x01\x01\x08\x0a" + bytes(8)  # NOP NOP timestamps
    segment = tcp(b"")
    segment = segment[:12] + bytes([(5 + 3) << 4]) + segment[13:] + options + framed(answer())
    assert [r.address for r in parse_dns_packet(ipv4(TCP, segment))] == [ADDR]


def test_ipv6_extension_header_is_skipped() -> None:
    hop_by_hop = bytes([UDP, 0]) + bytes(6)  # next header, length 0 (8 bytes), PadN
    assert [r.address for r in parse_dns_packet(ipv6(0, hop_by_hop + udp(answer())))] == [ADDR]


def test_dont_fragment_and_atomic_fragments_are_whole_packets() -> None:
    """Linux sets DF on most UDP; an IPv6 Fragment header with offset 0 and no M flag
    (RFC 6946) holds a whole datagram."""
    assert [r.address for r in parse_dns_packet(ipv4(UDP, udp(answer()), frag=0x4000))] == [ADDR]
    atomic = bytes([UDP, 0, 0, 0]) + b"\x00\x00\x00\x01"
    assert [r.address for r in parse_dns_packet(ipv6(44, atomic + udp(answer())))] == [ADDR]


def test_bytes_after_the_ip_packet_are_ignored() -> None:
    assert [r.address for r in parse_dns_packet(ipv4(UDP, udp(answer())) + b"\0" * 6)] == [ADDR]


@pytest.mark.parametrize(
    ("packet", "match"),
    [
        (b"", "empty packet"),
        (b"\x55" + bytes(40), "not an IP packet"),
        (ipv4(UDP, udp(answer(), sport=5353)), "source port 5353"),
        (ipv4(TCP, tcp(framed(answer()), sport=443)), "source port 443"),
        (ipv4(1, bytes(16)), "ip protocol 1"),
        (ipv4(UDP, udp(answer()), frag=0x2000), "IPv4 fragment"),
        (b"\x45" + bytes(10), "truncated IPv4 header"),
        (b"\x60" + bytes(30), "truncated IPv6 header"),
        (ipv6(44, bytes([UDP, 0, 0, 1]) + bytes(4) + udp(answer())), "IPv6 fragment"),
    ],
    ids=[
        "empty",
        "version5",
        "udp-5353",
        "tcp-443",
        "icmp",
        "v4-frag",
        "short-v4",
        "short-v6",
        "v6-frag",
    ],
)
def test_not_a_dns_answer_packet_raises(packet: bytes, match: str) -> None:
    with pytest.raises(PacketError, match=match):
        parse_dns_packet(packet)


def test_udp_length_longer_than_the_packet_raises() -> None:
    datagram = udp(answer())
    datagram = datagram[:4] + struct.pack("!H", len(datagram) + 1) + datagram[6:]
    with pytest.raises(PacketError, match="bad udp length"):
        parse_dns_packet(ipv4(UDP, datagram))


# -- parse_dns_packet: the DNS message ------------------------------------------------------


def test_a_query_is_not_an_answer() -> None:
    query = dns.message.make_query("api.example.org", "A").to_wire()
    with pytest.raises(PacketError, match="QR bit clear"):
        parse_dns_packet(ipv4(UDP, udp(query)))


def test_a_response_to_another_opcode_is_not_an_answer() -> None:
    wire = bytearray(answer())
    wire[2] |= 5 << 3  # opcode UPDATE
    with pytest.raises(PacketError, match="opcode"):
        parse_dns_packet(ipv4(UDP, udp(bytes(wire))))


@pytest.mark.parametrize("rcode", [dns.rcode.NXDOMAIN, dns.rcode.SERVFAIL, dns.rcode.REFUSED])
def test_an_error_rcode_resolves_nothing(rcode: dns.rcode.Rcode) -> None:
    """NXDOMAIN & co. are well-formed answers, so not PacketError (the caller counts those as
    malformed); they name no address, so: []. Even records a server added anyway are ignored."""
    assert parse_dns_packet(ipv4(UDP, udp(answer(rcode=rcode)))) == []


def test_nodata_answer_resolves_nothing() -> None:
    assert parse_dns_packet(ipv4(UDP, udp(answer(records=[])))) == []


def test_cname_chain_names_every_name_in_order_with_the_smallest_ttl() -> None:
    """Rules match any name of the chain; the TTL is the chain's weakest link."""
    assert parse_dns_packet(ipv4(UDP, udp(typical()))) == [
        Resolution(("www.example.org", "cdn.example.net"), ADDR, 60),
        Resolution(("www.example.org", "cdn.example.net"), IPv4Address("203.0.113.8"), 60),
    ]


def test_three_name_chain_in_any_order() -> None:
    records = [
        ("www.example.org.", 300, "CNAME", "cdn.example.net."),
        ("cdn.example.net.", 40, "CNAME", "edge.cdn.example.com."),
        ("edge.cdn.example.com.", 200, "A", str(ADDR)),
    ]
    expected = [
        Resolution(("www.example.org", "cdn.example.net", "edge.cdn.example.com"), ADDR, 40)
    ]
    for order in itertools.permutations(records):
        wire = answer("www.example.org", list(order))
        assert parse_dns_packet(ipv4(UDP, udp(wire))) == expected, order


def test_names_are_lowercase_without_trailing_dot() -> None:
    wire = answer("API.Example.ORG", [("api.EXAMPLE.org.", 5, "A", str(ADDR))])
    assert parse_dns_packet(ipv4(UDP, udp(wire))) == [Resolution(("api.example.org",), ADDR, 5)]


def test_records_for_names_nobody_asked_about_are_ignored() -> None:
    """A server must not be able to name an address outside the question's chain."""
    wire = answer(
        "api.example.org",
        [
            ("api.example.org.", 300, "A", str(ADDR)),
            ("bank.example.com.", 300, "A", "198.51.100.9"),
            ("other.example.org.", 300, "CNAME", "api.example.org."),
        ],
    )
    assert parse_dns_packet(ipv4(UDP, udp(wire))) == [Resolution(("api.example.org",), ADDR, 300)]


def test_cname_loop_resolves_nothing() -> None:
    wire = answer(
        "a.example.org",
        [
            ("a.example.org.", 60, "CNAME", "b.example.org."),
            ("b.example.org.", 60, "CNAME", "a.example.org."),
            ("c.example.org.", 60, "A", str(ADDR)),
        ],
    )
    assert parse_dns_packet(ipv4(UDP, udp(wire))) == []


def chain(hops: int) -> bytes:
    records = [(f"n{i}.example.org.", 60, "CNAME", f"n{i + 1}.example.org.") for i in range(hops)]
    records.append((f"n{hops}.example.org.", 60, "A", str(ADDR)))
    return answer("n0.example.org", records)


def test_sixteen_cnames_are_followed_seventeen_are_not() -> None:
    (resolution,) = parse_dns_packet(ipv4(UDP, udp(chain(16))))
    assert len(resolution.names) == 17
    assert resolution.names[-1] == "n16.example.org"
    assert parse_dns_packet(ipv4(UDP, udp(chain(17)))) == []


def test_mixed_a_and_aaaa_for_one_name() -> None:
    wire = answer(
        "api.example.org",
        [("api.example.org.", 300, "A", str(ADDR)), ("api.example.org.", 100, "AAAA", str(ADDR6))],
    )
    assert parse_dns_packet(ipv4(UDP, udp(wire))) == [
        Resolution(("api.example.org",), ADDR, 300),
        Resolution(("api.example.org",), ADDR6, 100),
    ]


def test_a_dns_message_cut_at_every_length_raises_packet_error_or_resolves() -> None:
    """Headers rebuilt around each prefix so that the DNS parser, not the IP check, sees it;
    then the whole packet cut at every length (the IP total length no longer fits)."""
    for wire in (typical(), answer(records=[("api.example.org.", 9, "AAAA", str(ADDR6))])):
        for cut in range(len(wire)):
            for packet in (ipv4(UDP, udp(wire[:cut])), ipv6(TCP, tcp(framed(wire[:cut])))):
                try:
                    result = parse_dns_packet(packet)
                except PacketError:
                    continue
                assert all(isinstance(r, Resolution) for r in result)
    for packet in (
        ipv4(UDP, udp(typical())),
        ipv6(UDP, udp(typical())),
        ipv4(TCP, tcp(framed(typical()))),
    ):
        for cut in range(len(packet)):
            with pytest.raises(PacketError):
                parse_dns_packet(packet[:cut])


# -- Hypothesis: malformed answers do not crash snitchd ------------------------------------


def only_packet_error(packet: bytes) -> None:
    try:
        result = parse_dns_packet(packet)
    except PacketError:
        return
    assert isinstance(result, list)
    assert all(isinstance(r, Resolution) for r in result)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_after_udp_headers_raise_only_packet_error(payload: bytes) -> None:
    only_packet_error(ipv4(UDP, udp(payload)))


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_behind_a_response_header_raise_only_packet_error(rest: bytes) -> None:
    """Random bytes rarely pass the QR check; this reaches dnspython's section parsers."""
    header = struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 3, 0, 1)
    only_packet_error(ipv6(UDP, udp(header + rest)))


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=8))
def test_corrupted_answers_raise_only_packet_error(edits: list[tuple[int, int]]) -> None:
    """A real answer with bytes overwritten: pointers, counts, rdlengths and types go wrong."""
    wire = bytearray(typical())
    for position, value in edits:
        wire[position % len(wire)] = value
    only_packet_error(ipv4(UDP, udp(bytes(wire))))
    only_packet_error(ipv4(TCP, tcp(framed(bytes(wire)))))


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_tcp_payload_and_whole_packets_raise_only_packet_error(data: bytes) -> None:
    only_packet_error(ipv4(TCP, tcp(data)))
    only_packet_error(data)
    only_packet_error(b"\x45" + data)
    only_packet_error(b"\x60" + data)


# -- The answer reader agrees with dnspython ------------------------------------------------


def dnspython_resolutions(wire: bytes) -> list[Resolution]:
    """What an answer names, read whole by dnspython: how dnssnoop read answers before its own
    reader (~10 times faster on the packet loop), kept here as the reference it must match."""
    message = dns.message.from_wire(wire)
    if message.rcode() != dns.rcode.NOERROR:
        return []
    cnames: dict[dns.name.Name, tuple[dns.name.Name, int]] = {}
    addresses: dict[dns.name.Name, list[tuple[IPv4Address | IPv6Address, int]]] = {}
    for rrset in message.answer:
        if rrset.rdclass != dns.rdataclass.IN:
            continue
        if rrset.rdtype == dns.rdatatype.CNAME:
            cnames[rrset.name] = (next(iter(rrset)).target, rrset.ttl)
        elif rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            kind = IPv4Address if rrset.rdtype == dns.rdatatype.A else IPv6Address
            addresses.setdefault(rrset.name, []).extend((kind(r.address), rrset.ttl) for r in rrset)
    result = []
    for question in message.question:
        name, ttl, seen = question.name, 2**32, {question.name}
        chain = [name.to_text(omit_final_dot=True).lower()]
        for hop in range(17):
            if name in addresses:
                result += [Resolution(tuple(chain), a, min(ttl, t)) for a, t in addresses[name]]
                break
            if name not in cnames or hop == 16 or cnames[name][0] in seen:
                break
            name, ttl = cnames[name][0], min(ttl, cnames[name][1])
            seen.add(name)
            chain.append(name.to_text(omit_final_dot=True).lower())
    return result


# Owner names drawn from a few, so that chains, loops, merged RRsets and compression happen;
# labels with the bytes dnspython's text form escapes, and mixed case.
_NAMES = st.sampled_from(
    ["a.example.org.", "B.Example.ORG.", "c.example.net.", "x.y.z.example.com.",
     "we\\.ird.example.org.", "sp\\032ace.example.", "\\255bin.example.", "example."]
)  # fmt: skip
_RECORD = st.one_of(
    st.tuples(_NAMES, st.just("A"), st.ip_addresses(v=4).map(str)),
    st.tuples(_NAMES, st.just("AAAA"), st.ip_addresses(v=6).map(str)),
    st.tuples(_NAMES, st.just("CNAME"), _NAMES),
    st.tuples(_NAMES, st.just("MX"), _NAMES.map(lambda n: f"10 {n}")),
    st.tuples(_NAMES, st.just("TXT"), st.just('"v=spf1 -all"')),
)


@settings(max_examples=600, deadline=None)
@given(
    _NAMES,
    st.sampled_from(["A", "AAAA"]),
    st.lists(st.tuples(_RECORD, st.integers(0, 2**31 - 1)), max_size=12),
)
def test_the_answer_reader_names_what_dnspython_names(
    qname: str, qtype: str, records: list[tuple[tuple[str, str, str], int]]
) -> None:
    """Every answer of A, AAAA, CNAME and other records over a few names, in any order and
    with any TTLs: the same resolutions in the same order, names spelt the same."""
    response = dns.message.make_response(dns.message.make_query(qname, qtype))
    for (owner, kind, value), ttl in records:
        response.answer.append(dns.rrset.from_text(owner, ttl, "IN", kind, value))
    wire = response.to_wire()
    assert parse_dns_packet(ipv4(UDP, udp(wire))) == dnspython_resolutions(wire)


@settings(max_examples=400, deadline=None)
@given(
    st.integers(0, 0xFFFF),
    st.lists(
        st.tuples(_NAMES, st.sampled_from(["A", "AAAA", "MX", "TXT", "ANY", "TYPE65280"])),
        min_size=0,
        max_size=3,
    ),
    st.booleans(),
)
def test_the_header_reader_reads_what_dnspython_reads(
    ident: int, questions: list[tuple[str, str]], response: bool
) -> None:
    """A query or a response with any id and 0 to 3 questions: the same id and first question
    (name as dnspython spells it, lowercase; type) as dnspython's question-only read."""
    message = dns.message.Message(ident)
    for name, kind in questions:
        message.question.append(
            dns.rrset.RRset(dns.name.from_text(name), 1, dns.rdatatype.from_text(kind))
        )
    if response:
        message.flags |= dns.flags.QR
    wire = message.to_wire()
    packet = ipv4(UDP, udp(wire) if response else udp(wire, sport=41000, dport=53))
    (got,) = read_dns_packet(packet, answer=response).messages
    reference = dns.message.from_wire(wire, question_only=True)
    assert got.id == reference.id
    first = reference.question[0] if reference.question else None
    expected = (
        None
        if first is None
        else Question(first.name.to_text(omit_final_dot=True).lower(), int(first.rdtype))
    )
    assert got.question == expected


def test_a_name_pointer_that_does_not_point_backwards_is_refused() -> None:
    """A pointer to itself or forwards could loop: the answer is refused, not followed."""
    wire = bytearray(answer())
    wire[-16:-14] = struct.pack("!H", 0xC000 | (len(wire) - 16))  # the record's owner: itself
    with pytest.raises(PacketError, match="pointer that does not point backwards"):
        parse_dns_packet(ipv4(UDP, udp(bytes(wire))))


# -- NameCache ------------------------------------------------------------------------------


CHAIN = Resolution(("www.example.org", "cdn.example.net"), ADDR, 60)


def test_learnt_names_are_found_by_address() -> None:
    cache = NameCache()
    cache.learn([CHAIN], now=1000.0)
    assert cache.names(ADDR, 1000.0) == {"www.example.org", "cdn.example.net"}
    assert cache.best(ADDR, 1000.0) == "www.example.org"
    assert len(cache) == 1
    assert cache.names(ADDR, 1001.0) is cache.names(ADDR, 1002.0), "hits reuse one frozenset"


def test_unknown_address_has_no_names_and_allocates_nothing() -> None:
    cache = NameCache()
    assert cache.names(ADDR, 0.0) == frozenset()
    assert cache.names(ADDR, 0.0) is cache.names(ADDR6, 0.0)
    assert cache.best(ADDR, 0.0) is None


def test_names_last_ttl_plus_grace() -> None:
    cache = NameCache(grace=30.0)
    cache.learn([CHAIN], now=1000.0)
    assert cache.names(ADDR, 1000.0 + 60 + 30 - 0.001) == {"www.example.org", "cdn.example.net"}
    assert cache.names(ADDR, 1000.0 + 60 + 30) == frozenset()
    assert cache.best(ADDR, 1000.0 + 90) is None
    assert len(cache) == 0, "an address with no names left is dropped on lookup"


def test_a_zero_ttl_answer_lives_for_the_grace_period() -> None:
    cache = NameCache(grace=60.0)
    cache.learn([Resolution(("api.example.org",), ADDR, 0)], now=0.0)
    assert cache.names(ADDR, 59.0) == {"api.example.org"}
    assert cache.names(ADDR, 60.0) == frozenset()


def test_each_name_expires_on_its_own() -> None:
    cache = NameCache(grace=0.0)
    cache.learn([Resolution(("a.example.org",), ADDR, 100)], now=0.0)
    cache.learn([Resolution(("b.example.org",), ADDR, 10)], now=0.0)
    assert cache.names(ADDR, 5.0) == {"a.example.org", "b.example.org"}
    assert cache.best(ADDR, 5.0) == "b.example.org"
    assert cache.names(ADDR, 10.0) == {"a.example.org"}
    assert cache.best(ADDR, 10.0) == "a.example.org"


def test_relearning_extends_but_never_shortens_a_name() -> None:
    cache = NameCache(grace=0.0)
    cache.learn([Resolution(("a.example.org",), ADDR, 100)], now=0.0)
    cache.learn([Resolution(("a.example.org",), ADDR, 5)], now=1.0)
    assert cache.names(ADDR, 50.0) == {"a.example.org"}
    cache.learn([Resolution(("a.example.org",), ADDR, 100)], now=90.0)
    assert cache.names(ADDR, 150.0) == {"a.example.org"}


def test_best_is_the_most_recently_learnt_queried_name_not_a_cname_target() -> None:
    cache = NameCache()
    cache.learn([Resolution(("api.example.org",), ADDR, 300)], now=0.0)
    cache.learn([CHAIN], now=1.0)
    assert cache.best(ADDR, 2.0) == "www.example.org"
    cache.learn([Resolution(("api.example.org",), ADDR, 300)], now=3.0)
    assert cache.best(ADDR, 4.0) == "api.example.org"
    cache.learn([Resolution(("x.example.org", "api.example.org"), ADDR, 300)], now=5.0)
    assert cache.best(ADDR, 6.0) == "x.example.org"


def test_an_address_keeps_at_most_32_names_dropping_the_least_recently_learnt() -> None:
    cache = NameCache()
    for i in range(40):
        cache.learn([Resolution((f"n{i}.example.org",), ADDR, 300)], now=float(i))
    names = cache.names(ADDR, 40.0)
    assert names == {f"n{i}.example.org" for i in range(8, 40)}
    assert cache.best(ADDR, 40.0) == "n39.example.org"


def test_max_addresses_evicts_the_least_recently_learnt() -> None:
    cache = NameCache(max_addresses=3)
    addresses = [IPv4Address(f"198.51.100.{i}") for i in range(4)]
    for i, address in enumerate(addresses[:3]):
        cache.learn([Resolution((f"n{i}.example.org",), address, 300)], now=float(i))
    cache.learn([Resolution(("again.example.org",), addresses[0], 300)], now=3.0)
    cache.learn([Resolution(("n3.example.org",), addresses[3], 300)], now=4.0)
    assert len(cache) == 3
    assert cache.names(addresses[1], 5.0) == frozenset()
    assert cache.names(addresses[0], 5.0) == {"n0.example.org", "again.example.org"}
    assert cache.names(addresses[3], 5.0) == {"n3.example.org"}


def test_learn_drops_expired_addresses() -> None:
    cache = NameCache(grace=0.0)
    cache.learn(
        [Resolution(("old.example.org",), IPv4Address(f"198.51.100.{i}"), 10) for i in range(4)],
        now=0.0,
    )
    cache.learn([CHAIN], now=20.0)
    assert len(cache) == 1


def test_learn_takes_the_parser_output() -> None:
    cache = NameCache()
    cache.learn(parse_dns_packet(ipv4(UDP, udp(typical()))), now=0.0)
    assert cache.names(IPv4Address("203.0.113.8"), 1.0) == {"www.example.org", "cdn.example.net"}


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="grace"):
        NameCache(grace=-1.0)
    with pytest.raises(ValueError, match="max_addresses"):
        NameCache(max_addresses=0)
