"""Bytes per flow from conntrack accounting: the end of a flow's life, after `decide` let it out.

snitchd logs each new outbound flow with its process; when conntrack forgets the flow it sends a
DESTROY event carrying the flow's packet and byte counters, and `FlowEnds` turns each event into a
`FlowEnd` keyed by the flow's original 5-tuple, the one `packet.decode` gave its first packet, so
the caller can join the counters to the flow's log row. It decides nothing and runs in the log
writer (a child process, so it never holds the packet loop's GIL); it must never block or raise
on the writer's loop, which also takes snitchd's batches.

Kernel facts behind it (measured on 6.18 in fresh network namespaces):

- Counters exist only for flows that began while `net.netfilter.nf_conntrack_acct` was 1 (per
  network namespace, default 0), and DESTROY events only for flows that began while some
  ctnetlink listener existed, as `net.netfilter.nf_conntrack_events` defaults to 2 ("only when
  a listener exists"; that flag is host-wide). So: `FlowEnds.start` (its probe loads
  nf_conntrack_netlink, and with it nf_conntrack), then `enable_accounting`, then the queue
  rules. Earlier flows go unreported, or arrive without counters (`FlowEnds.unaccounted`).
- A namespace only tracks connections once a rule needs conntrack (`-m conntrack`, `ct state`).
- DESTROY comes when the entry is deleted or reaped after its timeout, not when the sockets close:
  TCP waits out `nf_conntrack_tcp_timeout_time_wait` (120 s) after a clean close or
  `..._timeout_close` (10 s) after a reset, UDP `nf_conntrack_udp_timeout` (30 s; 120 s of
  `..._udp_timeout_stream` once both sides spoke twice), ICMP `nf_conntrack_icmp_timeout` (30 s).
  Then the kernel's garbage collector, one host-wide worker that rescans the table every 1-60 s
  (`GC_SCAN_INTERVAL_MAX`, adaptive; a known complaint, netfilter-devel "nf_conntrack: sysctl:
  expose gc worker scan interval", 2025), adds its own delay: with the timeouts set to 1 s,
  UDP ends came 1.0-18.9 s (median 7.2 s) and TCP ends 1.7-59.6 s (median 5.4 s) after the
  last packet (8 flows each, host shared with other tests).
  `conntrack -D` sends one at once: it reached `on_end` before the `conntrack` command exited.
- The counters are IP-layer: bytes are whole IP packets (headers included) as conntrack saw them
  at LOCAL_OUT / PRE_ROUTING, before GSO segmentation, so a TCP super-packet counts once.

Why a plain socket, and pyroute2 only for the probe request: pyroute2's `AsyncNFCTSocket` does
subscribe to NFNLGRP_CONNTRACK_DESTROY, but it reads through its own datagram transport into an
unbounded queue that a task must drain, and one ENOBUFS (an event storm) poisons it for good:
every later `fileno()` or request raises `OSError(ENOBUFS)` (measured, pyroute2 0.9.7). So we open
the socket ourselves, read it with `loop.add_reader`, count overruns and go on. Decoding with
pyroute2's `nfct_msg` costs 150-200 µs per event against 5-8 µs for a struct walk of the same
bytes (2-vCPU VM), so events are decoded with struct (`decode_ends`); a burst waits in the socket
buffer (4 MiB holds ~6.5k events: 20k flushed at once while the loop was busy gave 6553 ends and
one overrun).
Each reader call decodes at most `_BATCH` events (~3 ms) before the loop serves snitchd's batches.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pyroute2.netlink import (
    NETLINK_ADD_MEMBERSHIP,
    NETLINK_NETFILTER,
    NLM_F_REQUEST,
    SOL_NETLINK,
)
from pyroute2.netlink.marshal import Marshal
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_CTNETLINK, NFNLGRP_CONNTRACK_DESTROY
from pyroute2.netlink.nfnetlink.nfctsocket import (
    IPCTNL_MSG_CT_DELETE,
    IPCTNL_MSG_CT_GET_STATS,
    nfct_msg,
    nfct_stats,
)

from snitch_common.errors import BackendUnavailable
from snitch_common.records import IPAddress, Proto
from snitchd.ctwire import Entry, read_entry

__all__ = [
    "FlowEnd",
    "FlowEnds",
    "decode_ends",
    "decode_entry",
    "enable_accounting",
    "flow_end",
]

log = logging.getLogger(__name__)

_ACCT_SYSCTL = "/proc/sys/net/netfilter/nf_conntrack_acct"
_EVENTS_SYSCTL = "/proc/sys/net/netfilter/nf_conntrack_events"

_DESTROY = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
_GET_STATS = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET_STATS
_RCVBUF = 4 << 20
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Python does not export it
_BATCH = 16
_RECV_SIZE = 65536  # one event per datagram, ~200-400 bytes; never truncate a large one
_WARN_EVERY = 60.0  # seconds between two overrun warnings

_MARSHAL = Marshal()
_MARSHAL.msg_map.update({_DESTROY: nfct_msg, _GET_STATS: nfct_stats})


@dataclass(frozen=True, slots=True)
class FlowEnd:
    """A finished flow and what it carried, in IP-layer bytes and packets (headers included).

    The tuple is the ORIGINAL direction, as the first packet had it, filled as `packet.decode`
    fills `Flow`: for ICMP echo `sport` is the identifier, else 0; `dport` is 0 for ICMP and other
    port-less protocols. `*_out` is the original direction (outbound for flows snitchd queued),
    `*_in` the reply.
    """

    proto: Proto
    src: IPAddress
    sport: int
    dst: IPAddress
    dport: int
    bytes_out: int
    bytes_in: int
    packets_out: int
    packets_in: int
    # The tuple as the log's rows have it (`ctwire.Original.key`), when the decoder had it.
    key: tuple[str, str, int, str, int] | None = field(default=None, compare=False, repr=False)


_NLMSG = struct.Struct("=IHHII")
_NFGEN = 20  # nlmsghdr (16) + nfgenmsg (4)


def flow_end(entry: Entry) -> FlowEnd | None:
    """A decoded conntrack message as a `FlowEnd`, None when it carries no counters."""
    if entry.counters is None:
        return None
    o = entry.original
    packets_out, bytes_out, packets_in, bytes_in = entry.counters
    return FlowEnd(
        o.proto, o.src, o.sport, o.dst, o.dport, bytes_out, bytes_in, packets_out, packets_in, o.key
    )


def decode_entry(data: bytes, off: int, end: int, family: int) -> FlowEnd | None:
    """One conntrack message at data[off:end] (a DESTROY event or an entry of a dump): its
    original tuple and counters, None without counters; ValueError when malformed."""
    return flow_end(read_entry(data, off, end, family))


def decode_ends(data: bytes) -> list[FlowEnd | None]:
    """The conntrack DESTROY events in one netlink datagram (the kernel sends one per datagram).

    An item is None for a flow conntrack kept no counters for (it began while nf_conntrack_acct
    was 0). Raises ValueError, naming what is wrong, for any other message or a malformed one.
    A struct walk (`ctwire`): pyroute2's `nfct_msg` decodes the same bytes in 120-144 µs,
    this in ~4.5 µs (bench/bench_micro.py), once per finished flow on the log writer's loop;
    the unit tests check it against messages pyroute2 builds.
    """
    ends: list[FlowEnd | None] = []
    off = 0
    while off + _NFGEN <= len(data):
        length, kind = _NLMSG.unpack_from(data, off)[:2]
        if length < _NFGEN or off + length > len(data):
            raise ValueError(f"malformed netlink message at byte {off}")
        if kind != _DESTROY:
            raise ValueError(f"not a conntrack DESTROY event: message type {kind:#x}")
        family = data[off + 16]
        if family not in (socket.AF_INET, socket.AF_INET6):
            raise ValueError(f"conntrack event for address family {family}")
        ends.append(decode_entry(data, off, off + length, family))
        off += (length + 3) & ~3
    if not ends:
        raise ValueError(f"no netlink message in {len(data)} bytes")
    return ends


def enable_accounting() -> bool:
    """Turn on conntrack byte counting in this network namespace (it is per namespace).

    Only flows that begin afterwards are counted. Returns False, with a warning, when it cannot:
    the sysctl is missing until nf_conntrack is loaded (`FlowEnds.start` loads it), and is
    read-only in a namespace without CAP_NET_ADMIN over it.
    """
    try:
        with open(_ACCT_SYSCTL, "r+") as f:
            if f.read().strip() != "1":
                f.seek(0)
                f.write("1\n")
    except FileNotFoundError:
        log.warning(
            "cannot enable conntrack accounting: %s does not exist (nf_conntrack not loaded? "
            "try: modprobe nf_conntrack): flows will have no byte counts",
            _ACCT_SYSCTL,
        )
        return False
    except OSError as exc:
        log.warning(
            "cannot enable conntrack accounting: writing 1 to %s (sysctl "
            "net.netfilter.nf_conntrack_acct): %s: flows will have no byte counts",
            _ACCT_SYSCTL,
            exc.strerror or exc,
        )
        return False
    return True


class FlowEnds:
    """Reads conntrack DESTROY events from a netlink socket on the asyncio loop (loop.add_reader),
    calling `on_end(FlowEnd)` per finished flow. Non-blocking; never raises from the reader
    callback (log and count instead).

    Counters: `events` flow ends handed to `on_end`; `unaccounted` ends without counters (not
    handed on); `errors` socket overruns (each may stand for many lost events), undecodable
    messages and exceptions raised by `on_end`.
    """

    def __init__(self, on_end: Callable[[FlowEnd], None]) -> None:
        self._on_end = on_end
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._warned_at: float | None = None
        self.events = 0
        self.unaccounted = 0
        self.errors = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Subscribe to DESTROY events in this network namespace and read them on `loop`.

        Raises BackendUnavailable, naming nf_conntrack_netlink, when the kernel cannot deliver
        them. Events that arrive before the loop runs wait in the socket buffer.
        """
        if self._sock is not None:
            raise RuntimeError("FlowEnds already started")
        try:
            sock = socket.socket(
                socket.AF_NETLINK,
                socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        except OSError as exc:
            raise BackendUnavailable(
                f"cannot open a netfilter netlink socket: {exc.strerror or exc} "
                "(kernel without nfnetlink? try: modprobe nf_conntrack_netlink)"
            ) from exc
        try:
            _grow_buffer(sock)
            sock.bind((0, 0))
            _probe(sock)
            # Joining the group is what nf_conntrack_events=2 waits for; bind(groups) does it too.
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_CONNTRACK_DESTROY)
        except OSError as exc:
            sock.close()
            raise BackendUnavailable(
                f"cannot subscribe to conntrack DESTROY events: {exc.strerror or exc} "
                "(is nf_conntrack_netlink available? try: modprobe nf_conntrack_netlink)"
            ) from exc
        except BackendUnavailable:
            sock.close()
            raise
        _check_events_sysctl()
        loop.add_reader(sock.fileno(), self._read)
        self._sock, self._loop = sock, loop
        log.info(
            "reading conntrack flow ends buffer=%d",
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        )

    def close(self) -> None:
        sock, loop = self._sock, self._loop
        self._sock = self._loop = None
        if sock is None:
            return
        if loop is not None and not loop.is_closed():
            loop.remove_reader(sock.fileno())
        sock.close()

    def _read(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(_BATCH):
            try:
                data = sock.recv(_RECV_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                self.errors += 1
                if exc.errno == errno.ENOBUFS:  # the kernel dropped events; the socket goes on
                    self._overrun()
                    continue
                log.error("cannot read conntrack events: %s", exc)
                return
            try:
                self._deliver(data)
            except Exception:  # never let one event stop the loop's reader
                self.errors += 1
                log.exception("conntrack event handling failed")

    def _deliver(self, data: bytes) -> None:
        try:
            ends = decode_ends(data)
        except ValueError as exc:
            self.errors += 1
            log.warning("skipped a conntrack event: %s", exc)
            return
        for end in ends:
            if end is None:
                self.unaccounted += 1
                if self.unaccounted == 1:
                    log.warning(
                        "a flow ended without byte counters: it began while "
                        "net.netfilter.nf_conntrack_acct was 0 (see enable_accounting)"
                    )
                continue
            self.events += 1
            self._on_end(end)

    def _overrun(self) -> None:
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= _WARN_EVERY:
            self._warned_at = now
            log.warning(
                "conntrack events lost: socket buffer overrun (overruns=%d): some flows will "
                "have no byte counts",
                self.errors,
            )


def _grow_buffer(sock: socket.socket) -> None:
    """Room for a burst of ends (a flush, a scan timing out): ~6.5k events in 4 MiB, measured.
    SO_RCVBUFFORCE passes net.core.rmem_max (208 KiB on Debian) but needs CAP_NET_ADMIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RCVBUF)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)


def _probe(sock: socket.socket) -> None:
    """Ask ctnetlink for its table size: binding to its group succeeds even when the module is
    missing (the kernel only schedules a load), while a request loads it or fails. The answer
    comes within send(), so a non-blocking recv right after sees it."""
    msg = nfct_msg()
    msg["header"]["type"] = _GET_STATS
    msg["header"]["flags"] = NLM_F_REQUEST
    msg["header"]["sequence_number"] = 1
    msg["nfgen_family"] = socket.AF_UNSPEC
    msg.encode()
    sock.send(msg.data)
    try:
        reply = sock.recv(_RECV_SIZE)
    except BlockingIOError:
        raise BackendUnavailable(
            "conntrack netlink sent no answer to a request "
            "(is nf_conntrack_netlink available? try: modprobe nf_conntrack_netlink)"
        ) from None
    for answer in _MARSHAL.parse(reply):
        error = answer["header"].get("error")
        if error is not None:
            raise BackendUnavailable(
                f"conntrack netlink refused a request: {error} "
                "(is nf_conntrack_netlink available? try: modprobe nf_conntrack_netlink)"
            )


def _check_events_sysctl() -> None:
    try:
        with open(_EVENTS_SYSCTL) as f:
            value = f.read().strip()
    except OSError:
        return  # older kernels had no knob: events are always on there
    if value == "0":
        log.warning(
            "conntrack events are off in this network namespace "
            "(net.netfilter.nf_conntrack_events=0): flows will have no byte counts; "
            "try: sysctl -w net.netfilter.nf_conntrack_events=1"
        )
