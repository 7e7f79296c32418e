"""Conntrack DESTROY message → `FlowEnd`, the pure half of `traffic`.

Messages are real kernel datagrams (captured on 6.18) or built with pyroute2's own `nfct_msg`,
the codec the module decodes with. The key property is the join: a flow's end must carry the
5-tuple `packet.decode` gave its first packet, or its bytes never reach its log row.
"""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

import pytest
from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

from snitch_common.records import Proto
from snitchd.logwriter.conntrack import FlowEnd, decode_ends
from snitchd.packet import decode
from tests.support.packets import icmp_echo, ipv4, ipv6

DESTROY, NEW = 0x102, 0x100
V4 = (IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2"))
V6 = (IPv6Address("2001:db8::1"), IPv6Address("2001:db8::2"))

# `conntrack -D` of a finished TCP flow (192.0.2.1:34598 -> 192.0.2.2:8000, 10 bytes out, 50 in),
# as the kernel multicast it to NFNLGRP_CONNTRACK_DESTROY; `conntrack -L` had shown the same
# counters: packets=6 bytes=330 / packets=4 bytes=266. (The CTA_TUPLE_ORIG length was first
# transcribed as 0x3c; the kernel's is 0x34, which the strict struct decoder checks.)
KERNEL_TCP_END = bytes.fromhex(
    "d40000000201000000000000cc70000002000000340001801400018008000100c000020108000200c0000202"
    "1c00028005000100060000000600020087260000060003001f4000003400028014000180080001"
    "00c000020208000200c00002011c0002800500010006000000060002001f4000000600030087260000"
    "08000c00b83d644f080003000000020e1c0009800c00010000000000000000060c000200000000000000"
    "014a1c000a800c00010000000000000000040c000200000000000000010a100004800c00018005000100"
    "07000000"
)
# The same for one ping: echo id 28863, 84 bytes each way.
KERNEL_ICMP_END = bytes.fromhex(
    "dc0000000201000000000000cc700000020000003c0001801400018008000100c000020108000200c0000202"
    "2400028005000100010000000600040070bf0000050005000800000005000600000000003c000280140001"
    "8008000100c000020208000200c00002012400028005000100010000000600040070bf00000500050000"
    "000000050006000000000008000c00b7f72bb6080003000000020a080007000000001d1c0009800c0001"
    "0000000000000000010c00020000000000000000541c000a800c00010000000000000000010c0002000000"
    "000000000054"
)


def event(
    proto_attrs: list[list[Any]],
    *,
    family: int = socket.AF_INET,
    addrs: tuple[Any, Any] = V4,
    counters: tuple[tuple[int, int], tuple[int, int]] | None = ((3, 300), (2, 200)),
    bits32: bool = False,
    kind: int = DESTROY,
) -> bytes:
    """A conntrack event as the kernel would send it; `counters` is ((packets, bytes) out, in)."""
    v = "V6" if family == socket.AF_INET6 else "V4"
    tup = {
        "attrs": [
            [
                "CTA_TUPLE_IP",
                {"attrs": [[f"CTA_IP_{v}_SRC", str(addrs[0])], [f"CTA_IP_{v}_DST", str(addrs[1])]]},
            ],
            ["CTA_TUPLE_PROTO", {"attrs": proto_attrs}],
        ]
    }
    attrs: list[list[Any]] = [["CTA_TUPLE_ORIG", tup]]
    if counters is not None:
        width = "32" if bits32 else ""
        for name, (packets, count) in zip(("ORIG", "REPLY"), counters, strict=True):
            nested = [
                [f"CTA_COUNTERS{width}_PACKETS", packets],
                [f"CTA_COUNTERS{width}_BYTES", count],
            ]
            attrs.append([f"CTA_COUNTERS_{name}", {"attrs": nested}])
    msg = nfct_msg()
    msg["header"]["type"] = kind
    msg["nfgen_family"] = family
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data)


def ports(num: int, sport: int, dport: int) -> list[list[Any]]:
    return [["CTA_PROTO_NUM", num], ["CTA_PROTO_SRC_PORT", sport], ["CTA_PROTO_DST_PORT", dport]]


def icmp(num: int, kind: int, ident: int) -> list[list[Any]]:
    v = "V6" if num == 58 else ""
    return [
        ["CTA_PROTO_NUM", num],
        [f"CTA_PROTO_ICMP{v}_ID", ident],
        [f"CTA_PROTO_ICMP{v}_TYPE", kind],
        [f"CTA_PROTO_ICMP{v}_CODE", 0],
    ]


def one(data: bytes) -> FlowEnd | None:
    ends = decode_ends(data)
    assert len(ends) == 1
    return ends[0]


def test_kernel_tcp_event_gives_tuple_and_both_directions() -> None:
    assert one(KERNEL_TCP_END) == FlowEnd(
        proto=Proto.TCP,
        src=V4[0],
        sport=34598,
        dst=V4[1],
        dport=8000,
        bytes_out=330,
        bytes_in=266,
        packets_out=6,
        packets_in=4,
    )


def test_kernel_ping_event_keys_the_flow_by_echo_id() -> None:
    assert one(KERNEL_ICMP_END) == FlowEnd(Proto.ICMP, V4[0], 28863, V4[1], 0, 84, 84, 1, 1)


def test_ipv6_udp_event() -> None:
    data = event(ports(17, 5353, 53), family=socket.AF_INET6, addrs=V6)
    assert one(data) == FlowEnd(Proto.UDP, V6[0], 5353, V6[1], 53, 300, 200, 3, 2)


def test_old_kernel_32_bit_counters_are_read() -> None:
    end = one(event(ports(6, 40000, 443), bits32=True))
    assert end is not None
    assert (end.packets_out, end.bytes_out, end.packets_in, end.bytes_in) == (3, 300, 2, 200)


def test_counters_above_4_gib_survive() -> None:
    """A long download passes 2**32 bytes; conntrack's 64-bit counters must not wrap here."""
    end = one(event(ports(6, 40000, 443), counters=((10, 5 << 32), (2**40, (1 << 63) + 1))))
    assert end is not None
    assert (end.bytes_out, end.packets_in, end.bytes_in) == (5 << 32, 2**40, (1 << 63) + 1)


def test_flow_without_counters_is_none_not_zero_bytes() -> None:
    """A flow begun while nf_conntrack_acct was 0 has no counters; zeros would be a lie in `top`."""
    assert one(event(ports(6, 40000, 443), counters=None)) is None


def _tcp_udp(sport: int, dport: int) -> bytes:
    return struct.pack("!HH", sport, dport) + bytes(16)


# (first packet as NFQUEUE hands it over, the same flow's DESTROY event)
JOIN_CASES = {
    "tcp": (ipv4(6, _tcp_udp(40000, 443)), event(ports(6, 40000, 443))),
    "udp6": (
        ipv6(17, _tcp_udp(5353, 53)),
        event(ports(17, 5353, 53), family=socket.AF_INET6, addrs=V6),
    ),
    "ping": (ipv4(1, icmp_echo(8, 777)), event(icmp(1, 8, 777))),
    "ping6": (
        ipv6(58, icmp_echo(128, 778)),
        event(icmp(58, 128, 778), family=socket.AF_INET6, addrs=V6),
    ),
    "icmp-timestamp": (ipv4(1, icmp_echo(13, 779)), event(icmp(1, 13, 779))),
    "sctp-has-ports-but-is-other": (
        ipv4(132, _tcp_udp(2905, 2905)),
        event(ports(132, 2905, 2905)),
    ),
    "gre": (ipv4(47, bytes(8)), event([["CTA_PROTO_NUM", 47]])),
}


@pytest.mark.parametrize("first_packet, destroy", JOIN_CASES.values(), ids=JOIN_CASES.keys())
def test_end_carries_the_tuple_packet_decode_gave_the_first_packet(
    first_packet: bytes, destroy: bytes
) -> None:
    """snitchd joins a flow's bytes to its log row by this tuple: the two decoders must agree,
    including their quirks (ICMP sport = echo id only for echo requests, no ports for OTHER)."""
    flow = decode(first_packet)
    end = one(destroy)
    assert end is not None
    assert (end.proto, end.src, end.sport, end.dst, end.dport) == (
        flow.proto,
        flow.src,
        flow.sport,
        flow.dst,
        flow.dport,
    )


def test_end_addresses_are_ip_address_objects() -> None:
    end = one(KERNEL_TCP_END)
    assert end is not None
    assert end.src == ip_address("192.0.2.1") and isinstance(end.dst, IPv4Address)


def test_other_event_types_are_rejected() -> None:
    """Only DESTROY carries final counters; a NEW event reaching us means a wrong subscription."""
    with pytest.raises(ValueError, match="not a conntrack DESTROY event: message type 0x100"):
        decode_ends(event(ports(6, 1, 2), kind=NEW))


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "no netlink message"),
        (KERNEL_TCP_END[:12], "no netlink message"),
        (event([["CTA_PROTO_NUM", 6], ["CTA_PROTO_SRC_PORT", 1]]), "CTA_PROTO_DST_PORT"),
        (event([["CTA_PROTO_SRC_PORT", 1]]), "CTA_PROTO_NUM"),
    ],
    ids=["empty", "short-header", "tcp-without-dport", "no-protocol"],
)
def test_malformed_events_raise_value_error_naming_the_gap(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_ends(data)


def test_truncated_kernel_event_raises_value_error() -> None:
    """The reader counts a bad message and goes on; it relies on ValueError, not struct.error."""
    data = bytearray(KERNEL_TCP_END)
    data[:4] = struct.pack("=I", 60)  # header claims only the first attributes
    with pytest.raises(ValueError):
        decode_ends(bytes(data[:60]))


def test_unknown_address_family_is_rejected() -> None:
    data = bytearray(event(ports(6, 1, 2)))
    data[16] = socket.AF_PACKET  # nfgenmsg.nfgen_family
    with pytest.raises(ValueError, match="address family"):
        decode_ends(bytes(data))
