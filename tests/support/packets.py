"""IP packets built by hand with `struct`, as the kernel hands them to a queue: IP header first,
no link layer, so each field's offset is visible. Used by the unit tests and the benchmarks."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

__all__ = ["SYN", "framed", "icmp_echo", "ipv4", "ipv6", "tcp", "udp"]

SYN = 0x02
_SRC4, _DST4 = IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2")
_SRC6, _DST6 = IPv6Address("2001:db8::1"), IPv6Address("2001:db8::2")


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(
    proto: int,
    payload: bytes,
    *,
    src: IPv4Address = _SRC4,
    dst: IPv4Address = _DST4,
    options: bytes = b"",
    frag: int = 0,
) -> bytes:
    """An IPv4 header (with a correct checksum) in front of `payload`; `frag` is the
    flags+fragment-offset word."""
    assert len(options) % 4 == 0
    ihl = 5 + len(options) // 4
    header = struct.pack(
        "!BBHHHBBH4s4s",
        (4 << 4) | ihl,
        0,
        ihl * 4 + len(payload),
        0x1234,
        frag,
        64,
        proto,
        0,
        src.packed,
        dst.packed,
    )
    header += options
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + payload


def ipv6(
    next_header: int, payload: bytes, *, src: IPv6Address = _SRC6, dst: IPv6Address = _DST6
) -> bytes:
    return (
        struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, 64, src.packed, dst.packed)
        + payload
    )


def tcp(sport: int, dport: int, payload: bytes = b"", flags: int = SYN) -> bytes:
    """A 20-byte TCP header in front of `payload`; checksum 0 (nothing here reads it)."""
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 64240, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes = b"hello") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp_echo(kind: int, ident: int, seq: int = 1) -> bytes:
    return struct.pack("!BBHHH", kind, 0, 0, ident, seq) + b"pingpong"


def framed(wire: bytes) -> bytes:
    """DNS over TCP: the message behind its 2-byte length (RFC 1035 §4.2.2)."""
    return struct.pack("!H", len(wire)) + wire
