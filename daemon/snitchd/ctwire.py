"""The conntrack netlink (ctnetlink) messages snitch reads: one decoder for all three readers.

The log writer reads DESTROY events (`logwriter.conntrack`: a flow's last counters) and dumps
the entries snitch allowed (`logwriter.livebytes`: bytes while they flow; every second while a
live view is open, three times a minute otherwise);
`flowcut` dumps the same entries to cut the ones a new rule denies. They were three struct
walks of the same bytes that could drift; this is the one they share.

Cost: the live dump reads every allowed entry conntrack still tracks, each time (a TCP flow
stays ~2 minutes after its close), so the same original tuple is decoded again and again.
Its decoded form (`Original`: addresses, ports, and the string key the log's rows are joined
on) is a pure function of the tuple attribute's bytes, so it is kept by those bytes
(`_ORIGINALS`): a known tuple costs one dict lookup instead of two nested walks, two
`ip_address` and two `str` of it. And the attributes of a message are found by its shape
(`_Shape`, learnt from a walk of the first message of that length and layout): two unpacks,
where the walk is a Python step per attribute. Measured with bench/bench_micro.py (`ctwire`,
the writer bench).

Never trusts a length: a truncated or malformed message raises ValueError naming what is
wrong (errors are not cached), never anything else, never a guess. No I/O.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from ipaddress import ip_address

from snitch_common.records import IPAddress, Proto

__all__ = ["Entry", "Original", "forget", "new_dump", "read_dump", "read_entry"]

CT_NEW = 1 << 8  # (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW: each entry of a dump
NLMSG_ERROR, NLMSG_DONE = 2, 3
CTA_TUPLE_ORIG, CTA_TIMEOUT, CTA_MARK, CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY = 1, 7, 8, 9, 10

_IPPROTO = {6: Proto.TCP, 17: Proto.UDP, 1: Proto.ICMP, 58: Proto.ICMP}
_ECHO_REQUEST = frozenset((8, 128))  # as packet.decode: only these carry an identifier there
_NLMSG = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_ERR = struct.Struct("=i")
_NFGEN = 20  # nlmsghdr (16) + nfgenmsg (4)
_BE16, _BE32, _BE64 = struct.Struct("!H"), struct.Struct("!I"), struct.Struct("!Q")
# A CTA_COUNTERS_* nest as the kernel writes it: PACKETS then BYTES, 64-bit, 12 bytes each.
# Read big-endian whole: the attribute headers (host order) are compared as the same bytes.
_C64 = struct.Struct("!IQIQ")
_C64_HEADS = (struct.unpack("!I", _NLA.pack(12, 1))[0], struct.unpack("!I", _NLA.pack(12, 2))[0])
_ORIGINALS_MAX = 1 << 16  # decoded tuples kept; all dropped at once when full


@dataclass(frozen=True, slots=True)
class Original:
    """A conntrack entry's original tuple, filled as `packet.decode` fills `Flow`: for ICMP
    echo `sport` is the identifier, else 0; `dport` is 0 for ICMP and port-less protocols.
    `key` is the same as the log's row has it (proto, src, sport, dst, dport as text)."""

    proto: Proto
    ipproto: int
    src: IPAddress
    sport: int
    dst: IPAddress
    dport: int
    key: tuple[str, str, int, str, int]


@dataclass(frozen=True, slots=True)
class Entry:
    """One conntrack message: its original tuple, its counters (packets out, bytes out,
    packets in, bytes in; None when conntrack kept none) and its mark (None when absent)."""

    original: Original
    counters: tuple[int, int, int, int] | None
    mark: int | None


_ORIGINALS: dict[bytes, Original] = {}
_ADDRESSES: dict[bytes, tuple[IPAddress, str]] = {}  # packed address -> (it, its text)


def _attrs(data: bytes, off: int, end: int) -> dict[int, tuple[int, int]]:
    """type -> (start, end) of each netlink attribute's payload in data[off:end]."""
    out: dict[int, tuple[int, int]] = {}
    unpack = _NLA.unpack_from
    while off + 4 <= end:
        length, kind = unpack(data, off)
        if length < 4 or off + length > end:
            raise ValueError(f"malformed conntrack attribute at byte {off}")
        out[kind & 0x3FFF] = (off + 4, off + length)
        off += (length + 3) & ~3
    return out


def _need(
    attrs: dict[int, tuple[int, int]], kind: int, name: str, size: int = 0
) -> tuple[int, int]:
    span = attrs.get(kind)
    if span is None:
        raise ValueError(f"conntrack event without {name}")
    if size and span[1] - span[0] < size:
        raise ValueError(f"conntrack event with a malformed {name}")
    return span


def _original(data: bytes, start: int, end: int, family: int) -> Original:
    """The CTA_TUPLE_ORIG payload at data[start:end], decoded or from `_ORIGINALS`."""
    raw = data[start:end] + bytes((family,))
    known = _ORIGINALS.get(raw)
    if known is not None:
        return known
    original = _laid_out(data, start, end, family)
    if original is not None:
        if len(_ORIGINALS) >= _ORIGINALS_MAX:
            _ORIGINALS.clear()
        _ORIGINALS[raw] = original
        return original
    tup = _attrs(data, start, end)
    ips = _attrs(data, *_need(tup, 1, "CTA_TUPLE_IP"))
    ports = _attrs(data, *_need(tup, 2, "CTA_TUPLE_PROTO"))
    n = 16 if family == socket.AF_INET6 else 4
    s0 = _need(ips, 3 if n == 16 else 1, "CTA_IP_SRC", n)[0]
    d0 = _need(ips, 4 if n == 16 else 2, "CTA_IP_DST", n)[0]
    src, src_text = _address(data[s0 : s0 + n])
    dst, dst_text = _address(data[d0 : d0 + n])
    ipproto = data[_need(ports, 1, "CTA_PROTO_NUM", 1)[0]]
    proto = _IPPROTO.get(ipproto, Proto.OTHER)
    sport = dport = 0
    if proto in (Proto.TCP, Proto.UDP):
        sport = _BE16.unpack_from(data, _need(ports, 2, "CTA_PROTO_SRC_PORT", 2)[0])[0]
        dport = _BE16.unpack_from(data, _need(ports, 3, "CTA_PROTO_DST_PORT", 2)[0])[0]
    elif proto is Proto.ICMP:
        type_at, id_at = (8, 7) if ipproto == 58 else (5, 4)
        if data[_need(ports, type_at, "CTA_PROTO_ICMP_TYPE", 1)[0]] in _ECHO_REQUEST:
            sport = _BE16.unpack_from(data, _need(ports, id_at, "CTA_PROTO_ICMP_ID", 2)[0])[0]
    key = (proto.value, src_text, sport, dst_text, dport)
    original = Original(proto, ipproto, src, sport, dst, dport, key)
    if len(_ORIGINALS) >= _ORIGINALS_MAX:
        _ORIGINALS.clear()
    _ORIGINALS[raw] = original
    return original


def _heads(*attrs: tuple[int, int]) -> tuple[int, ...]:
    """Attribute headers (length, type) as `_V4_TUPLE`/`_V6_TUPLE` read them: big-endian
    words of the same bytes, which the kernel writes in host order."""
    return tuple(struct.unpack("!I", _NLA.pack(*a))[0] for a in attrs)


# A TCP or UDP CTA_TUPLE_ORIG payload as the kernel lays it out (ctnetlink_dump_tuples): the
# IP nest (source, destination), then the protocol nest (number, padded; source and
# destination port, padded). Read whole in one unpack when every header is the expected one,
# which gives what the walk in `_original` gives for those bytes; anything else is walked.
_V4_TUPLE = struct.Struct("!II4sI4sIIB3xIH2xIH2x")
_V6_TUPLE = struct.Struct("!II16sI16sIIB3xIH2xIH2x")
_PORTS_HEADS = _heads((28, 0x8002), (5, 1), (6, 2), (6, 3))
_V4_HEADS = _heads((20, 0x8001), (8, 1), (8, 2)) + _PORTS_HEADS
_V6_HEADS = _heads((44, 0x8001), (20, 3), (20, 4)) + _PORTS_HEADS
_PORTED = {6: Proto.TCP, 17: Proto.UDP}


def _laid_out(data: bytes, start: int, end: int, family: int) -> Original | None:
    """The tuple at data[start:end] when it is a TCP or UDP one laid out as the kernel lays
    it out (`_V4_TUPLE`), else None (the caller walks it)."""
    if family == socket.AF_INET:
        layout, heads = _V4_TUPLE, _V4_HEADS
    elif family == socket.AF_INET6:
        layout, heads = _V6_TUPLE, _V6_HEADS
    else:
        return None
    if end - start != layout.size:
        return None
    h0, h1, src_raw, h2, dst_raw, h3, h4, ipproto, h5, sport, h6, dport = layout.unpack_from(
        data, start
    )
    proto = _PORTED.get(ipproto)
    if proto is None or (h0, h1, h2, h3, h4, h5, h6) != heads:
        return None
    src, src_text = _address(src_raw)
    dst, dst_text = _address(dst_raw)
    key = (proto.value, src_text, sport, dst_text, dport)
    return Original(proto, ipproto, src, sport, dst, dport, key)


def _address(raw: bytes) -> tuple[IPAddress, str]:
    """An address and its text, from `_ADDRESSES`: each new flow's tuple is decoded once, but
    its addresses are few (this machine's, its usual servers), and `ip_address` and `str` of
    one cost ~2 µs of Python together."""
    known = _ADDRESSES.get(raw)
    if known is None:
        addr = ip_address(raw)
        known = (addr, str(addr))
        if len(_ADDRESSES) >= _ORIGINALS_MAX:
            _ADDRESSES.clear()
        _ADDRESSES[raw] = known
    return known


def _counters(data: bytes, start: int, end: int) -> tuple[int, int]:
    """(packets, bytes) of a CTA_COUNTERS_* nest: 64-bit, or the old 32-bit attributes."""
    if end - start == 24:
        head1, packets, head2, count = _C64.unpack_from(data, start)
        if head1 == _C64_HEADS[0] and head2 == _C64_HEADS[1]:  # the kernel's own layout
            return packets, count
    c = _attrs(data, start, end)
    if 1 in c:
        packets = _BE64.unpack_from(data, _need(c, 1, "CTA_COUNTERS_PACKETS", 8)[0])[0]
        return packets, _BE64.unpack_from(data, _need(c, 2, "CTA_COUNTERS_BYTES", 8)[0])[0]
    packets = _BE32.unpack_from(data, _need(c, 3, "CTA_COUNTERS32_PACKETS", 4)[0])[0]
    return packets, _BE32.unpack_from(data, _need(c, 4, "CTA_COUNTERS32_BYTES", 4)[0])[0]


def read_entry(data: bytes, off: int, end: int, family: int) -> Entry:
    """One conntrack message at data[off:end] (a DESTROY event or an entry of a dump) of
    address `family`; ValueError when malformed."""
    return _read(data, off, end, family)[0]


@dataclass(frozen=True, slots=True)
class _Shape:
    """Where a message's attributes are, learnt from one walk of it (`_walk`): messages of
    the kernel's are a few shapes (a protocol, a family, a kind of message), so the next one
    of the same length is read with two unpacks where the walk is a Python step per attribute.

    `heads` reads, from the nfgenmsg's end, every attribute header the walk read (and the
    inner headers of the 64-bit counter nests): the message has this shape when they equal
    `expected`, then the walk would find every attribute where this one did (it only follows
    the lengths in them), so reading it so is no guess. `values` reads the counters and the
    mark, in the message's order. Offsets are from the message's start."""

    heads: struct.Struct
    expected: tuple[int, ...]
    values: struct.Struct
    counters: tuple[int, int, int, int] | None  # where in `values`, in `Entry.counters`' order
    mark: int | None  # where in `values`
    orig: int
    orig_end: int
    timeout_at: int | None


_SHAPES: dict[int, list[_Shape]] = {}  # by message length
_SHAPES_MAX = 256  # shapes kept; all dropped at once when full
_HEAD = struct.Struct("!I")


def _read(data: bytes, off: int, end: int, family: int) -> tuple[Entry, int | None]:
    """`read_entry`, and where its CTA_TIMEOUT value is (from `off`; None without one)."""
    shapes = _SHAPES.get(end - off)
    if shapes is not None:
        at = off + _NFGEN
        for shape in shapes:
            if shape.heads.unpack_from(data, at) == shape.expected:
                values = shape.values.unpack_from(data, at)
                where, counters = shape.counters, None
                if where is not None:
                    counters = (
                        values[where[0]],
                        values[where[1]],
                        values[where[2]],
                        values[where[3]],
                    )
                mark = None if shape.mark is None else values[shape.mark]
                original = _original(data, off + shape.orig, off + shape.orig_end, family)
                return Entry(original, counters, mark), shape.timeout_at
    return _walk(data, off, end, family)


def _walk(data: bytes, off: int, end: int, family: int) -> tuple[Entry, int | None]:
    """`_read` of a message of no known shape: a walk of its attributes, which learns the
    shape when it is one `_Shape` can say."""
    # Where each attribute read starts and ends (0: absent): plain ints, as this runs for every
    # entry of every dump and every DESTROY event.
    orig = orig_end = out_at = out_end = in_at = in_end = mark_at = mark_end = 0
    timeout_at = None
    pos = off + _NFGEN
    unpack = _NLA.unpack_from
    heads: list[int] = []
    while pos + 4 <= end:  # the top level, as `_attrs` walks it, keeping only what we read
        heads.append(pos)
        length, kind = unpack(data, pos)
        if length < 4 or pos + length > end:
            raise ValueError(f"malformed conntrack attribute at byte {pos}")
        kind &= 0x3FFF
        if kind == CTA_TUPLE_ORIG:
            orig, orig_end = pos + 4, pos + length
        elif kind >= CTA_TIMEOUT:  # the others we read are 7 to 10
            if kind == CTA_COUNTERS_ORIG:
                out_at, out_end = pos + 4, pos + length
            elif kind == CTA_COUNTERS_REPLY:
                in_at, in_end = pos + 4, pos + length
            elif kind == CTA_MARK:
                mark_at, mark_end = pos + 4, pos + length
            elif kind == CTA_TIMEOUT and length == 8:
                timeout_at = pos + 4 - off
        pos += (length + 3) & ~3
    if not orig:
        raise ValueError("conntrack event without CTA_TUPLE_ORIG")
    original = _original(data, orig, orig_end, family)
    counters = None
    if out_at and in_at:
        counters = _counters(data, out_at, out_end) + _counters(data, in_at, in_end)
    mark = None
    if mark_at and mark_end - mark_at >= 4:
        mark = _BE32.unpack_from(data, mark_at)[0]
    shape = _shape(
        data,
        off,
        heads,
        (orig, orig_end),
        (out_at, out_end),
        (in_at, in_end),
        (mark_at, mark_end),
    )
    if shape is not None:
        if sum(map(len, _SHAPES.values())) >= _SHAPES_MAX:
            _SHAPES.clear()
        _SHAPES.setdefault(end - off, []).append(shape)
    return Entry(original, counters, mark), timeout_at


def _shape(
    data: bytes,
    off: int,
    heads: list[int],
    orig: tuple[int, int],
    out: tuple[int, int],
    into: tuple[int, int],
    mark: tuple[int, int],
) -> _Shape | None:
    """The `_Shape` of a message just walked: `heads` where its attribute headers are, the
    spans the walk chose (absent: 0). None for counters not in the kernel's own 64-bit
    layout (`_counters` walks those)."""
    checked = list(heads)
    wanted: list[tuple[int, str, int]] = []  # (position, struct code, index in Entry's order)
    if out[0] and into[0]:
        for i, (start, stop) in enumerate((out, into)):
            if stop - start != 24 or _C64.unpack_from(data, start)[::2] != _C64_HEADS:
                return None
            checked += [start, start + 12]
            wanted += [(start + 4, "Q", 2 * i), (start + 16, "Q", 2 * i + 1)]
    if mark[0] and mark[1] - mark[0] >= 4:
        wanted.append((mark[0], "I", 4))
    wanted.sort()
    base = off + _NFGEN
    layout = _layout([(at - base, "I") for at in sorted(checked)])
    timeout_at = None
    for at in heads:  # the walk's choice: the last CTA_TIMEOUT of 8 bytes
        length, kind = _NLA.unpack_from(data, at)
        if kind & 0x3FFF == CTA_TIMEOUT and length == 8:
            timeout_at = at + 4 - off
    where = {index: n for n, (_, _, index) in enumerate(wanted)}
    return _Shape(
        layout,
        layout.unpack_from(data, base),
        _layout([(at - base, code) for at, code, _ in wanted]),
        (where[0], where[1], where[2], where[3]) if 0 in where else None,
        where.get(4),
        orig[0] - off,
        orig[1] - off,
        timeout_at,
    )


def _layout(fields: list[tuple[int, str]]) -> struct.Struct:
    """A big-endian struct reading `fields` (position, code), in order, skipping between."""
    fmt, cur = "!", 0
    for at, code in fields:
        if at > cur:
            fmt += f"{at - cur}x"
        fmt += code
        cur = at + struct.calcsize("!" + code)
    return struct.Struct(fmt)


@dataclass(frozen=True, slots=True)
class _Dumped:
    """An entry as the last dump had it: its message from the nfgenmsg on, but for the bytes
    of its timeout (the one attribute that changes while nothing else does): `head` up to
    them, `tail` after them (all of it in `head`, and `tail` empty, without a timeout)."""

    head: bytes
    tail: bytes
    timeout_at: int | None
    entry: Entry


# The entries read by this dump, and by the one before (what this one did not read yet): a
# dump's entries are compared with the last dump's, however many conntrack holds, and the
# entries conntrack forgot go with the dump after (`new_dump`). Without `new_dump` (`flowcut`)
# the first alone grows, up to its bound.
_DUMPED: dict[bytes, _Dumped] = {}
_DUMPED_BEFORE: dict[bytes, _Dumped] = {}
_DUMPED_MAX = 1 << 17  # entries kept by a dump (a TCP close's 120 s at 1,000 flows/s)
_DUMPED_ROTATE = 1 << 16  # entries kept before a dump drops what the one before read
_FAMILY = tuple(bytes((i,)) for i in range(256))  # a family's byte (of a message), made once


def new_dump() -> None:
    """A dump begins (`livebytes.LiveDump`). Once `_DUMPED_ROTATE` entries are kept: what the
    last dumps read is kept to compare with, what only earlier ones read (conntrack forgot
    it since) is dropped. Entries kept then follow the table's size, where one bound for all
    (clearing everything when reached) made every entry be decoded anew at every dump once
    the table held more; below it, nothing is moved (a move costs ~0.5 µs an entry)."""
    global _DUMPED, _DUMPED_BEFORE  # two generations, swapped
    if len(_DUMPED) >= _DUMPED_ROTATE:
        _DUMPED_BEFORE, _DUMPED = _DUMPED, {}


def _dumped(data: bytes, off: int, end: int, family: int) -> Entry:
    """An entry of a dump. Most are the same bytes as in the last dump but for their timeout
    (a closed TCP flow's entry stays ~2 minutes): those are answered with the Entry decoded
    then, by comparing the bytes (never a guess: any other byte differs, it is decoded).
    Every dump compares every entry snitch allowed that conntrack still holds: so the two
    parts are compared in place, without making the message's bytes with a zeroed timeout."""
    head = off + _NFGEN
    if head + 4 <= end:
        length, kind = _NLA.unpack_from(data, head)
        if kind & 0x3FFF == CTA_TUPLE_ORIG and 4 <= length <= end - head:
            raw = data[head + 4 : head + length] + _FAMILY[family]
            dumped = _DUMPED
            seen = dumped.get(raw)
            moved = seen is None
            if moved:
                seen = _DUMPED_BEFORE.get(raw)
            if seen is not None:
                at = seen.timeout_at
                if at is None:
                    same = data[off + 16 : end] == seen.head
                else:
                    # The timeout's 4 bytes must be there: a message cut inside them has the
                    # same bytes before and (none) after.
                    before, after = data[off + 16 : off + at], data[off + at + 4 : end]
                    same = off + at + 4 <= end and before == seen.head and after == seen.tail
                if same:
                    if moved:
                        if len(dumped) >= _DUMPED_MAX:
                            dumped.clear()
                        dumped[raw] = seen
                    return seen.entry
            entry, timeout_at = _read(data, off, end, family)
            if len(_DUMPED) >= _DUMPED_MAX:
                _DUMPED.clear()
            if timeout_at is None:
                _DUMPED[raw] = _Dumped(data[off + 16 : end], b"", None, entry)
            else:
                before, after = data[off + 16 : off + timeout_at], data[off + timeout_at + 4 : end]
                _DUMPED[raw] = _Dumped(before, after, timeout_at, entry)
            return entry
    return read_entry(data, off, end, family)


def read_dump(
    data: bytes, seq: int | None = None, any_kind: bool = False
) -> tuple[list[Entry], bool]:
    """The IPv4 and IPv6 entries in one datagram of a dump answer, and whether the dump is
    done in it. With `seq`, messages of other requests are passed over; `any_kind` reads every
    ctnetlink message as an entry, not only IPCTNL_MSG_CT_NEW (a dump's). Raises ValueError on
    a malformed message and OSError when the kernel refused the request."""
    entries: list[Entry] = []
    off = 0
    unpack = _NLMSG.unpack_from
    while off + _NLMSG.size <= len(data):
        length, kind, _, got, _ = unpack(data, off)
        if length < _NLMSG.size or off + length > len(data):
            raise ValueError(f"malformed netlink message at byte {off}")
        if seq is None or got == seq:
            if kind == NLMSG_DONE:
                return entries, True
            if kind == NLMSG_ERROR:
                if length < _NLMSG.size + _ERR.size:
                    raise ValueError(f"truncated netlink error message at byte {off}")
                code = -_ERR.unpack_from(data, off + _NLMSG.size)[0]
                if code:
                    raise OSError(code, f"conntrack dump refused: {_strerror(code)}")
                return entries, True
            if (kind == CT_NEW or (any_kind and kind >> 8 == CT_NEW >> 8)) and length >= _NFGEN:
                family = data[off + _NLMSG.size]
                if family in (socket.AF_INET, socket.AF_INET6):
                    entries.append(_dumped(data, off, off + length, family))
        off += (length + 3) & ~3
    return entries, False


def forget() -> None:
    """Drop what was kept of earlier messages: for a reader that dumps once in a while
    (`flowcut`), where keeping it would only hold memory until the next time."""
    _ORIGINALS.clear()
    _DUMPED.clear()
    _DUMPED_BEFORE.clear()
    _ADDRESSES.clear()
    _SHAPES.clear()


def _strerror(code: int) -> str:
    import os  # noqa: PLC0415 - only on the error path

    return os.strerror(code)
