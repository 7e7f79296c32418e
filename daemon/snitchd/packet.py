"""Bytes of a queued packet → `Flow`: the second step of the packet path, after `queue`.

Only the IP (`ipwire`) and transport headers are read, with `struct`, because this runs for
every new flow (scapy costs ~160 µs a packet here, this ~3 µs). A truncated or malformed packet
raises `PacketError`; it never returns a guess. No I/O.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

from snitch_common.errors import PacketError
from snitch_common.records import Flow, Proto
from snitchd.ipwire import read_ip

__all__ = ["decode"]

_IPPROTO = {6: Proto.TCP, 17: Proto.UDP, 1: Proto.ICMP, 58: Proto.ICMP}
_PORTS = struct.Struct("!HH")
_ECHO_REQUEST = frozenset((8, 128))
_UDPLITE = 136  # ports where UDP has them; rules see it as proto "other" (issue 14)
# Nearly every new flow: IPv4 without options, TCP or UDP, not a later fragment. Read in one
# unpack (version and header length, fragment field, protocol, addresses, ports), a third of
# the general walk's cost; anything else takes the walk (`read_ip`).
_V4_PLAIN = struct.Struct("!B5xHxB2x4s4sHH")
_V4_TRANSPORT = {6: Proto.TCP, 17: Proto.UDP}


def decode(data: bytes, iface: str = "") -> Flow:
    """Decode the first packet of an outbound flow; `iface` is the outgoing interface name."""
    if len(data) >= _V4_PLAIN.size and data[0] == 0x45:
        _, frag, ipproto, src, dst, sport, dport = _V4_PLAIN.unpack_from(data)
        proto = _V4_TRANSPORT.get(ipproto)
        if proto is not None and not frag & 0x1FFF:
            return Flow(proto, IPv4Address(src), sport, IPv4Address(dst), dport, iface, ipproto)
    ip = read_ip(data)
    proto = _IPPROTO.get(ip.ipproto, Proto.OTHER)
    off = ip.offset
    sport = dport = 0
    if proto in (Proto.TCP, Proto.UDP) or ip.ipproto == _UDPLITE:
        if ip.later_fragment:
            raise PacketError(f"{proto.value} fragment without its header")
        if len(data) < off + 4:
            raise PacketError(
                f"truncated {proto.value} header: the packet holds {len(data)} bytes, its ports "
                f"start at byte {off}"
            )
        sport, dport = _PORTS.unpack_from(data, off)
    elif proto is Proto.ICMP:
        if len(data) < off + 8:
            raise PacketError(f"truncated icmp header: {len(data) - off} bytes")
        if data[off] in _ECHO_REQUEST:
            # A ping socket is bound to its echo identifier as if it were a source port.
            sport = _PORTS.unpack_from(data, off + 4)[0]
    return Flow(proto, ip.src, sport, ip.dst, dport, iface, ip.ipproto)
