"""The IPv4/IPv6 header walk that both queues need: where the transport header starts, and who
talks to whom. `packet` reads the first packet of a new flow with it, `dnssnoop` a DNS answer.

One walk, so that an IPv6 extension header or a fragment is read the same way on both paths
(they were two copies that could drift). It reads headers with `struct` only (~1 µs) and never
trusts a length field further than the bytes it was given: a truncated or malformed header
raises `PacketError`, never anything else. No I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from snitch_common.errors import PacketError
from snitch_common.records import IPAddress

__all__ = ["IPHeader", "read_ip"]

# IPv6 extension headers that may precede the transport header (RFC 8200 §4); 44 is Fragment.
_V6_EXT = frozenset((0, 43, 60, 51, 135, 139, 140))
_V6_FRAGMENT = 44
_V6_MAX_EXT = 8
_U16 = struct.Struct("!H")


@dataclass(frozen=True, slots=True)
class IPHeader:
    """An IP header as far as snitch reads it.

    `offset` is where the transport header starts; `length` is the end of the packet as the
    header declares it (total length, or 40 + payload length), which may lie beyond the bytes
    the queue copied. `later_fragment`: a fragment after the first, so no transport header here;
    `fragmented`: any part of a fragmented packet (the first one included).
    """

    src: IPAddress
    dst: IPAddress
    ipproto: int
    offset: int
    length: int
    later_fragment: bool
    fragmented: bool


def read_ip(data: bytes) -> IPHeader:
    if not data:
        raise PacketError("empty packet")
    version = data[0] >> 4
    if version == 4:
        return _read_v4(data)
    if version == 6:
        return _read_v6(data)
    raise PacketError(f"not an IP packet: version {version}")


def _read_v4(data: bytes) -> IPHeader:
    ihl = (data[0] & 0x0F) * 4
    if ihl < 20 or len(data) < ihl:
        raise PacketError(f"truncated IPv4 header: {len(data)} bytes, header length {ihl}")
    frag = _U16.unpack_from(data, 6)[0]
    return IPHeader(
        IPv4Address(data[12:16]),
        IPv4Address(data[16:20]),
        data[9],
        ihl,
        _U16.unpack_from(data, 2)[0],
        later_fragment=(frag & 0x1FFF) != 0,
        fragmented=(frag & 0x3FFF) != 0,  # MF flag or an offset
    )


def _read_v6(data: bytes) -> IPHeader:
    if len(data) < 40:
        raise PacketError(f"truncated IPv6 header: {len(data)} bytes")
    nxt, off = data[6], 40
    later = fragmented = False
    for _ in range(_V6_MAX_EXT):
        if nxt == _V6_FRAGMENT:
            if len(data) < off + 8:
                raise PacketError("truncated IPv6 fragment header")
            field = _U16.unpack_from(data, off + 2)[0]
            later = later or (field >> 3) != 0
            fragmented = fragmented or (field & 0xFFF9) != 0  # an offset or the M flag
            nxt, off = data[off], off + 8
        elif nxt in _V6_EXT:
            if len(data) < off + 2:
                raise PacketError("truncated IPv6 extension header")
            step = (data[off + 1] + 2) * 4 if nxt == 51 else (data[off + 1] + 1) * 8
            nxt, off = data[off], off + step
        else:
            break
    else:
        raise PacketError("too many IPv6 extension headers")
    return IPHeader(
        IPv6Address(data[8:24]),
        IPv6Address(data[24:40]),
        nxt,
        off,
        40 + _U16.unpack_from(data, 4)[0],
        later_fragment=later,
        fragmented=fragmented,
    )
