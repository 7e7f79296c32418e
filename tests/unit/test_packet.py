"""Bytes of a queued packet → Flow. The packets are built by hand with `struct` (as the kernel
would hand them to us: IP header first, no link layer), so each field's offset is visible."""

from __future__ import annotations

import contextlib
import struct
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snitch_common.errors import PacketError
from snitch_common.records import Flow, Proto
from snitchd.packet import decode
from tests.support.packets import icmp_echo, ipv4, ipv6, tcp, udp

SRC4, DST4 = IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2")
SRC6, DST6 = IPv6Address("2001:db8::1"), IPv6Address("2001:db8::2")


def hop_by_hop(next_header: int) -> bytes:
    # 8 bytes: next header, length 0 (= 8 octets), a PadN option filling the rest.
    return bytes([next_header, 0, 1, 4, 0, 0, 0, 0])


def fragment_header(next_header: int, offset_units: int, more: bool) -> bytes:
    return struct.pack("!BBHI", next_header, 0, (offset_units << 3) | int(more), 0xCAFE)


def auth_header(next_header: int) -> bytes:
    # AH: length in 4-octet units minus 2; 12 fixed bytes + 12 bytes of ICV = 24 = (4 + 2) * 4.
    return bytes([next_header, 4, 0, 0]) + struct.pack("!II", 0x100, 1) + bytes(12)


GOOD = [
    pytest.param(
        ipv4(6, tcp(40000, 443)),
        Flow(Proto.TCP, SRC4, 40000, DST4, 443, "eth0", 6),
        id="ipv4-tcp",
    ),
    pytest.param(
        ipv4(17, udp(53000, 53)),
        Flow(Proto.UDP, SRC4, 53000, DST4, 53, "eth0", 17),
        id="ipv4-udp",
    ),
    pytest.param(
        ipv4(6, tcp(40001, 80), options=bytes([1, 1, 1, 0])),  # NOP NOP NOP EOL
        Flow(Proto.TCP, SRC4, 40001, DST4, 80, "eth0", 6),
        id="ipv4-options-tcp",
    ),
    pytest.param(
        ipv4(1, icmp_echo(8, 0x4242)),
        Flow(Proto.ICMP, SRC4, 0x4242, DST4, 0, "eth0", 1),
        id="ipv4-icmp-echo",
    ),
    pytest.param(
        ipv6(6, tcp(40002, 443)),
        Flow(Proto.TCP, SRC6, 40002, DST6, 443, "eth0", 6),
        id="ipv6-tcp",
    ),
    pytest.param(
        ipv6(0, hop_by_hop(17) + udp(5353, 53)),
        Flow(Proto.UDP, SRC6, 5353, DST6, 53, "eth0", 17),
        id="ipv6-hop-by-hop-udp",
    ),
    pytest.param(
        ipv6(60, hop_by_hop(51) + auth_header(6) + tcp(40003, 22)),
        Flow(Proto.TCP, SRC6, 40003, DST6, 22, "eth0", 6),
        id="ipv6-destopts-ah-tcp",
    ),
    pytest.param(
        ipv6(44, fragment_header(17, 0, more=True) + udp(4000, 4001)),
        Flow(Proto.UDP, SRC6, 4000, DST6, 4001, "eth0", 17),
        id="ipv6-first-fragment-udp",
    ),
    pytest.param(
        ipv6(58, icmp_echo(128, 0x0777)),
        Flow(Proto.ICMP, SRC6, 0x0777, DST6, 0, "eth0", 58),
        id="ipv6-icmp-echo",
    ),
]


@pytest.mark.parametrize(("data", "expected"), GOOD)
def test_decodes_first_packet_of_a_flow(data: bytes, expected: Flow) -> None:
    """The fields a rule matches on (proto, addresses, ports, interface) come out exactly, after
    any IPv4 options or IPv6 extension headers."""
    assert decode(data, "eth0") == expected


@pytest.mark.parametrize(("data", "expected"), GOOD)
def test_truncated_packet_raises_packet_error_or_decodes(data: bytes, expected: Flow) -> None:
    """A short read (a small copy range, a broken sender) must give PacketError, which the queue
    reader handles, never an IndexError or struct.error that would kill it."""
    for n in range(len(data)):
        try:
            got = decode(data[:n], "eth0")
        except PacketError:
            continue
        assert isinstance(got, Flow)


@pytest.mark.parametrize(("data", "expected"), GOOD)
def test_truncated_packet_never_decodes_to_a_different_flow(data: bytes, expected: Flow) -> None:
    """The module's promise: "a truncated or malformed packet raises PacketError; it never returns
    a guess". A prefix either is refused or carries everything the full packet said (a ping
    cut before its echo id must not come out as "echo id 0", which names another socket)."""
    for n in range(len(data)):
        try:
            got = decode(data[:n], "eth0")
        except PacketError:
            continue
        assert got == expected, f"prefix of {n} bytes decoded to {got}"


def test_transport_ports_need_the_whole_port_fields() -> None:
    """Ports cut in half must not be read as zeros or garbage."""
    full = ipv4(6, tcp(40000, 443))
    for n in range(20, 24):
        with pytest.raises(PacketError, match="tcp"):
            decode(full[:n])
    assert decode(full[:24]).dport == 443


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x00" * 40, id="version-0"),
        pytest.param(b"\x50" + bytes(39), id="version-5"),
        pytest.param(bytes([0x44]) + ipv4(6, tcp(1, 2))[1:], id="ipv4-ihl-too-small"),
        pytest.param(bytes([0x4F]) + ipv4(6, tcp(1, 2))[1:], id="ipv4-ihl-past-end"),
        pytest.param(ipv4(6, tcp(1, 2), frag=185), id="ipv4-later-fragment-tcp"),
        pytest.param(
            ipv6(44, fragment_header(17, 185, more=False) + b"\0" * 8), id="ipv6-later-fragment-udp"
        ),
        pytest.param(ipv6(60, hop_by_hop(60) * 8 + udp(1, 2)), id="ipv6-too-many-ext-headers"),
        pytest.param(ipv6(0, hop_by_hop(17)[:1]), id="ipv6-ext-header-cut"),
        pytest.param(ipv6(44, fragment_header(17, 0, more=True)[:4]), id="ipv6-fragment-cut"),
        pytest.param(ipv6(0, bytes([17, 200]) + bytes(6) + udp(1, 2)), id="ipv6-ext-len-past-end"),
    ],
)
def test_malformed_packet_raises_packet_error(data: bytes) -> None:
    """Malformed packets are refused instead of being decoded into a guess a rule might match."""
    with pytest.raises(PacketError):
        decode(data)


def test_other_protocol_decodes_without_ports() -> None:
    """GRE, SCTP and friends are still flows (rules without port/proto cover them); they keep
    their IP protocol number for the log."""
    got = decode(ipv4(47, b"\0" * 8))
    assert (got.proto, got.sport, got.dport, got.ipproto) == (Proto.OTHER, 0, 0, 47)


def test_icmp_other_than_echo_has_no_identifier() -> None:
    """Only an echo request carries an identifier a ping socket is bound to."""
    unreachable = struct.pack("!BBHI", 3, 3, 0, 0) + b"\0" * 28
    got = decode(ipv4(1, unreachable))
    assert (got.proto, got.sport, got.dport) == (Proto.ICMP, 0, 0)


def test_flow_prints_for_people() -> None:
    """Flows appear in prompts and logs; IPv6 addresses are bracketed before a port."""
    assert str(decode(ipv4(6, tcp(40000, 443)), "eth0")) == "tcp 192.0.2.2:443 via eth0"
    assert str(decode(ipv6(17, udp(1, 53)))) == "udp [2001:db8::2]:53"
    assert str(decode(ipv4(1, icmp_echo(8, 1)))) == "icmp 192.0.2.2"


@settings(max_examples=500)
@given(st.binary(max_size=120))
def test_random_bytes_raise_only_packet_error(data: bytes) -> None:
    """Anything the kernel could hand us decodes or raises PacketError; nothing else escapes."""
    with contextlib.suppress(PacketError):
        decode(data)


@settings(max_examples=500)
@given(
    st.sampled_from([0x45, 0x46, 0x4F, 0x60]),
    st.sampled_from([0, 1, 6, 17, 43, 44, 51, 58, 60, 135, 255]),
    st.binary(max_size=120),
)
def test_random_ip_like_bytes_raise_only_packet_error(first: int, proto: int, rest: bytes) -> None:
    """Random bytes rarely get past the version check; these start with a plausible version and
    protocol so the fuzzing reaches the header walks."""
    data = bytearray([first]) + bytearray(rest)
    if first == 0x60 and len(data) > 6:
        data[6] = proto
    elif len(data) > 9:
        data[9] = proto
    try:
        got = decode(bytes(data))
    except PacketError:
        return
    assert got.dst.version == first >> 4
