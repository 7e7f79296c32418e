"""Cutting flows that are already open, when a rule now denies them (issue 18).

A verdict is given to a flow's first packet; the kernel keeps it on the conntrack entry
(`connmark`), so a deny rule added later would never see a connection opened before it. Here,
over ctnetlink and sock_diag, in a worker thread (never on the packet loop: a dump reads every
entry snitch allowed, which a user can make many of):

- `allowed_flows` dumps the conntrack entries whose mark holds snitch's allow verdict, filtered
  by the kernel (CTA_MARK/CTA_MARK_MASK on the dump request), as `Flow`s;
- `cut` ends some of them: for TCP, the local socket is destroyed (SOCK_DESTROY,
  CONFIG_INET_DIAG_DESTROY: the kernel sends the peer a reset and the program's next call fails
  with ECONNABORTED), then the conntrack entry is deleted, so the flow's next packet, of any
  protocol, is NEW again and goes to the queue, where the rules now deny it.

Which flows a rule covers is the firewall's question (it decides them as new packets), not
this module's. Codec: struct on plain netlink sockets, as `connmark` and `procs.sockdiag` do;
the dump's answer is read by `ctwire`, the decoder the log writer shares.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from snitch_common.records import Flow, Proto
from snitchd import ctwire
from snitchd.ctwire import read_dump

__all__ = ["CutResult", "FlowCutter", "decode_entries", "encode_delete", "encode_dump"]

NETLINK_NETFILTER = 12
NETLINK_SOCK_DIAG = 4
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 1, 2
SOCK_DESTROY = 21
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
CTA_TUPLE_ORIG, CTA_MARK, CTA_MARK_MASK = 1, 8, 21
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
MAX_FLOWS = 1 << 18  # entries read at most: nf_conntrack_max is 262144 on most machines

_NLMSG = struct.Struct("=IHHII")
_NFGEN = struct.Struct("=BBH")
_NLA = struct.Struct("=HH")
_ERR = struct.Struct("=i")
# inet_diag_req_v2 (as in procs.sockdiag), sent as SOCK_DESTROY
_DIAG = struct.Struct("=IHHII BBBxI HH16s16sI8s")
_NO_COOKIE = b"\xff" * 8
_PROTOS = {socket.IPPROTO_TCP: Proto.TCP, socket.IPPROTO_UDP: Proto.UDP}


@dataclass(frozen=True, slots=True)
class CutResult:
    """What `cut` did to one flow: `reset` when its TCP socket was destroyed (the peer got a
    reset), `deleted` when its conntrack entry went (`error`: why not)."""

    flow: Flow
    reset: bool
    deleted: bool
    error: str = ""


def _attr(kind: int, payload: bytes) -> bytes:
    size = _NLA.size + len(payload)
    return _NLA.pack(size, kind) + payload + b"\0" * (-size % 4)


def _nest(kind: int, *attrs: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(attrs))


def _message(kind: int, flags: int, seq: int, family: int, body: bytes) -> bytes:
    size = _NLMSG.size + _NFGEN.size + len(body)
    header = _NLMSG.pack(size, (NFNL_SUBSYS_CTNETLINK << 8) | kind, flags, seq, 0)
    return header + _NFGEN.pack(family, 0, 0) + body


def encode_dump(seq: int, family: int, mark: int, mask: int) -> bytes:
    """A conntrack dump of the entries whose `mask` bits of the mark are `mark`."""
    body = _attr(CTA_MARK, struct.pack("!I", mark)) + _attr(CTA_MARK_MASK, struct.pack("!I", mask))
    return _message(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, family, body)


def encode_delete(seq: int, flow: Flow) -> bytes:
    """Delete the conntrack entry whose original tuple is `flow`'s (TCP and UDP)."""
    v4 = isinstance(flow.dst, IPv4Address)
    ip = _nest(
        CTA_TUPLE_IP,
        _attr(CTA_IP_V4_SRC if v4 else CTA_IP_V6_SRC, flow.src.packed),
        _attr(CTA_IP_V4_DST if v4 else CTA_IP_V6_DST, flow.dst.packed),
    )
    number = socket.IPPROTO_TCP if flow.proto is Proto.TCP else socket.IPPROTO_UDP
    l4 = _nest(
        CTA_TUPLE_PROTO,
        _attr(CTA_PROTO_NUM, bytes((flow.ipproto or number,))),
        _attr(CTA_PROTO_SRC_PORT, struct.pack("!H", flow.sport)),
        _attr(CTA_PROTO_DST_PORT, struct.pack("!H", flow.dport)),
    )
    family = socket.AF_INET if v4 else socket.AF_INET6
    body = _nest(CTA_TUPLE_ORIG, ip, l4)
    return _message(IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, seq, family, body)


def decode_entries(
    data: bytes, mark: int | None = None, mask: int = 0xFFFFFFFF
) -> tuple[list[Flow], bool]:
    """The flows (original tuples, TCP and UDP) of one read of a conntrack dump, and whether
    the dump ended in it; with `mark`, only entries whose mark has it under `mask` (checked
    here too, not only by the kernel's dump filter: an inbound flow, a local server's, must
    never be taken for one snitch let out). Raises OSError for an error message or a
    malformed one (`ctwire` decodes)."""
    try:
        entries, done = read_dump(data, any_kind=True)
    except ValueError as exc:
        raise OSError(errno.EBADMSG, f"conntrack dump: {exc}") from None
    flows = [
        Flow(_PROTOS[o.ipproto], o.src, o.sport, o.dst, o.dport)
        for entry in entries
        if (o := entry.original).ipproto in _PROTOS
        and (mark is None or (entry.mark is not None and entry.mark & mask == mark))
    ]
    return flows, done


class FlowCutter:
    """Netlink sockets for dumping, deleting and resetting; one thread at a time (a worker)."""

    def __init__(self) -> None:
        self._seq = 0

    def _next(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def allowed_flows(self, mark: int, mask: int) -> list[Flow]:
        """Every TCP and UDP flow whose conntrack mark holds `mark` under `mask` (at most
        MAX_FLOWS), IPv4 and IPv6."""
        try:
            return self._allowed_flows(mark, mask)
        finally:
            ctwire.forget()  # snitchd dumps once in a while: keep nothing of it meanwhile

    def _allowed_flows(self, mark: int, mask: int) -> list[Flow]:
        flows: list[Flow] = []
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
            sock.settimeout(5.0)
            for family in (socket.AF_INET, socket.AF_INET6):
                sock.send(encode_dump(self._next(), family, mark, mask))
                done = False
                while not done:
                    found, done = decode_entries(sock.recv(1 << 16), mark, mask)
                    flows += found
                    if len(flows) >= MAX_FLOWS:
                        return list(dict.fromkeys(flows))[:MAX_FLOWS]
        return list(dict.fromkeys(flows))  # a kernel that ignores the family dumps both

    def cut(self, flows: list[Flow]) -> list[CutResult]:
        """Reset each TCP flow's socket and delete each flow's conntrack entry."""
        out: list[CutResult] = []
        with (
            socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as ct,
            socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as diag,
        ):
            ct.settimeout(5.0)
            diag.settimeout(5.0)
            for flow in flows:
                reset = False
                errors: list[str] = []
                if flow.proto is Proto.TCP:
                    try:
                        reset = self._destroy(diag, flow)
                    except OSError as exc:
                        errors.append(f"socket not reset: {exc.strerror}")
                try:
                    deleted = self._ack(ct, encode_delete(self._next(), flow))
                except OSError as exc:
                    deleted = False
                    if exc.errno != errno.ENOENT:  # gone already: nothing left to cut
                        errors.append(f"conntrack entry not deleted: {exc.strerror}")
                out.append(CutResult(flow, reset, deleted, "; ".join(errors)))
        return out

    def _destroy(self, sock: socket.socket, flow: Flow) -> bool:
        """SOCK_DESTROY the local TCP socket of `flow`; False when there is none any more."""
        family = socket.AF_INET if isinstance(flow.dst, IPv4Address) else socket.AF_INET6
        request = _DIAG.pack(
            _DIAG.size,
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            self._next(),
            0,
            family,
            socket.IPPROTO_TCP,
            0,
            0xFFFFFFFF,
            socket.htons(flow.sport),
            socket.htons(flow.dport),
            _padded(flow.src),
            _padded(flow.dst),
            0,
            _NO_COOKIE,
        )
        try:
            return self._ack(sock, request)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise

    def _ack(self, sock: socket.socket, request: bytes) -> bool:
        seq = _NLMSG.unpack_from(request)[3]
        sock.send(request)
        for _ in range(64):
            data = sock.recv(8192)
            if len(data) < _NLMSG.size + _ERR.size:
                continue
            _, kind, _, got, _ = _NLMSG.unpack_from(data)
            if kind != NLMSG_ERROR or got != seq:
                continue
            code = -_ERR.unpack_from(data, _NLMSG.size)[0]
            if code:
                raise OSError(code, os.strerror(code))
            return True
        raise OSError(errno.EIO, "netlink sent no ack")


def _padded(address: IPv4Address | IPv6Address) -> bytes:
    return address.packed.ljust(16, b"\0")
