"""Refusals kept on conntrack entries, so that a refused flow never comes back to the queue.

An allowed flow's mark is set in the kernel, in the verdict's own step (`netfilter`'s rules
move the allow mark of the repeated packet to its conntrack entry). A denied or rejected packet
is dropped, and a dropped packet's entry is never confirmed (confirmation is the last step of
POSTROUTING), so there is nothing to mark: the next packet of the flow would make a fresh NEW
entry and be queued again. So after `firewall` gives the verdict, we *create* the entry over
ctnetlink, with the flow's tuples and snitch's bits of the conntrack mark (the layout is in
`netfilter`, whose rules act on it); the flow's later packets find it and the kernel drops (or
rejects) them. Each of those packets refreshes it, so it ends like any flow: when the program
stops sending (UDP 30 s, a SYN 120 s, ICMP 30 s: the kernel's own timeouts).

TCP, UDP and ICMP echo only (the tuples a `Flow` names in full). A failure is an OSError for the
caller to count: the verdict was already given, so a flow we could not mark is only queued again.

Codec: struct on a plain netlink socket, as `procs` does for sock_diag; the kernel answers
inside send(), so the ack is read without waiting (MSG_DONTWAIT). It runs once per refused
flow on the packet loop and holds no state but the socket and a sequence number.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from ipaddress import IPv4Address

from snitch_common.errors import BackendUnavailable
from snitch_common.records import Flow, Proto

__all__ = ["ConnMarks", "encode_request"]

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_CREATE = 0x400
NLA_F_NESTED = 0x8000
# linux/netfilter/nfnetlink_conntrack.h
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_TIMEOUT, CTA_MARK, CTA_MARK_MASK = 1, 2, 7, 8, 21
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE = 4, 5, 6
CTA_PROTO_ICMPV6_ID, CTA_PROTO_ICMPV6_TYPE, CTA_PROTO_ICMPV6_CODE = 7, 8, 9

# A created entry lives this long unless a later packet refreshes it (to the kernel's own
# timeout for its state): nf_conntrack_udp_timeout, ..._tcp_timeout_syn_sent, ..._icmp_timeout.
_TIMEOUT = {Proto.UDP: 30, Proto.TCP: 120, Proto.ICMP: 30}
_ECHO = {4: (8, 0), 6: (128, 129)}  # request and reply types (ICMP, ICMPv6)
_NLMSG = struct.Struct("=IHHII")
_NFGEN = struct.Struct("=BBH")
_NLA = struct.Struct("=HH")
_ERR = struct.Struct("=i")


def _attr(kind: int, payload: bytes) -> bytes:
    size = _NLA.size + len(payload)
    return _NLA.pack(size, kind) + payload + b"\0" * (-size % 4)


def _nest(kind: int, *attrs: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(attrs))


def _tuple(kind: int, flow: Flow, reply: bool) -> bytes:
    src, dst = (flow.dst, flow.src) if reply else (flow.src, flow.dst)
    v4 = isinstance(flow.dst, IPv4Address)
    ip = _nest(
        CTA_TUPLE_IP,
        _attr(CTA_IP_V4_SRC if v4 else CTA_IP_V6_SRC, src.packed),
        _attr(CTA_IP_V4_DST if v4 else CTA_IP_V6_DST, dst.packed),
    )
    l4: tuple[bytes, ...]
    if flow.proto is Proto.ICMP:
        request, answer = _ECHO[4 if v4 else 6]
        ident, kind_, code = (
            (CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE)
            if v4
            else (CTA_PROTO_ICMPV6_ID, CTA_PROTO_ICMPV6_TYPE, CTA_PROTO_ICMPV6_CODE)
        )
        l4 = (
            _attr(ident, struct.pack("!H", flow.sport)),
            _attr(kind_, bytes((answer if reply else request,))),
            _attr(code, b"\0"),
        )
    else:
        sport, dport = (flow.dport, flow.sport) if reply else (flow.sport, flow.dport)
        l4 = (
            _attr(CTA_PROTO_SRC_PORT, struct.pack("!H", sport)),
            _attr(CTA_PROTO_DST_PORT, struct.pack("!H", dport)),
        )
    return _nest(
        kind, ip, _nest(CTA_TUPLE_PROTO, _attr(CTA_PROTO_NUM, bytes((_ipproto(flow),))), *l4)
    )


def _ipproto(flow: Flow) -> int:
    if flow.ipproto:
        return flow.ipproto
    if flow.proto is Proto.ICMP:
        return socket.IPPROTO_ICMP if isinstance(flow.dst, IPv4Address) else socket.IPPROTO_ICMPV6
    return socket.IPPROTO_TCP if flow.proto is Proto.TCP else socket.IPPROTO_UDP


def encode_request(seq: int, flow: Flow, mark: int, mask: int) -> bytes | None:
    """An IPCTNL_MSG_CT_NEW that makes `flow`'s conntrack entry when there is none and sets the
    `mask` bits of its mark to `mark`. None for a flow whose conntrack tuple we cannot name:
    not TCP, UDP or ICMP echo (`packet.decode` gives ICMP a source port, the echo identifier,
    only for echo requests; an identifier of 0 cannot be told apart, so it is left alone too)."""
    if flow.proto is Proto.OTHER or (flow.proto is Proto.ICMP and flow.sport == 0):
        return None
    body = b"".join(
        (
            _tuple(CTA_TUPLE_ORIG, flow, reply=False),
            _tuple(CTA_TUPLE_REPLY, flow, reply=True),
            _attr(CTA_TIMEOUT, struct.pack("!I", _TIMEOUT[flow.proto])),
            _attr(CTA_MARK, struct.pack("!I", mark)),
            _attr(CTA_MARK_MASK, struct.pack("!I", mask)),
        )
    )
    family = socket.AF_INET if isinstance(flow.dst, IPv4Address) else socket.AF_INET6
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE
    size = _NLMSG.size + _NFGEN.size + len(body)
    header = _NLMSG.pack(size, (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW, flags, seq, 0)
    return header + _NFGEN.pack(family, 0, 0) + body


class ConnMarks:
    """A ctnetlink socket that writes our mark bits onto conntrack entries, one flow at a time."""

    def __init__(self) -> None:
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_NETFILTER)
        except OSError as exc:
            raise BackendUnavailable(
                f"cannot open a ctnetlink socket: {exc.strerror} (does the kernel have "
                "nfnetlink and nf_conntrack_netlink? try: modprobe nf_conntrack_netlink)"
            ) from None
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def mark(self, flow: Flow, mark: int, mask: int) -> bool:
        """Make `flow`'s conntrack entry with the `mask` bits of its mark set to `mark` (see
        `encode_request`). False when the flow has no tuple we can name; OSError when the
        kernel refused (EPERM: not root; ENOMEM: table full)."""
        self._seq = seq = (self._seq + 1) & 0xFFFFFFFF
        request = encode_request(seq, flow, mark, mask)
        if request is None:
            return False
        self._sock.send(request)
        while True:
            try:
                # The kernel answers inside send(); an empty queue means it never will.
                data = self._sock.recv(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                raise OSError(errno.EIO, "ctnetlink sent no ack") from None
            if len(data) < _NLMSG.size + _ERR.size:
                continue
            _, kind, _, got, _ = _NLMSG.unpack_from(data)
            if kind != NLMSG_ERROR or got != seq:  # an ack a failed call left queued
                continue
            code = -_ERR.unpack_from(data, _NLMSG.size)[0]
            if code:
                raise OSError(code, os.strerror(code))
            return True
