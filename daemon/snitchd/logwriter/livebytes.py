"""Bytes while they flow: the accounting of the flows snitch let out, read while they are open.

A flow's counters used to reach the log only when conntrack forgot it (`conntrack.FlowEnds`),
up to two minutes after a TCP close. So the log writer also dumps the conntrack entries that
carry snitch's allow mark (`netfilter.ALLOW_MARK` under `MARK_MASK`, written by snitch's own
kernel rules in the allow verdict's step: `netfilter`): every `DUMP_INTERVAL` while a live
view is open, three times a minute otherwise (`logwriter.child`, which says why). The kernel
filters the dump by that mark (CTA_MARK + CTA_MARK_MASK in the request), so the dump never
reads other programs' entries or the entries snitch made to hold a deny. `Accounting` turns
the dumps and the ends into per-app deltas: per-minute rollups for the store
(`store.TrafficMinute`) and the rates of the last interval (`protocol.AppRate`) that snitchd
passes on to subscribers.

It runs in the log writer process only, never on snitchd's packet loop. Which app a flow is
comes from the log rows snitchd hands over (`learn`): a flow counts once its row arrived; its
bytes before that are counted then, as the first dump after the row takes all of its counters.

Kernel facts (6.18, measured in the lab): a dump answers within recv() calls on a blocking
socket (the kernel fills each datagram as it is read). Counters are IP-layer bytes, as for
`FlowEnds` (headers included).
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from snitch_common.errors import BackendUnavailable
from snitchd.ctwire import Entry, new_dump, read_dump
from snitchd.logwriter.conntrack import FlowEnd, flow_end
from snitchd.logwriter.protocol import AppRate
from snitchd.netfilter import ALLOW_MARK, MARK_MASK
from snitchd.store import TrafficMinute

__all__ = [
    "DUMP_INTERVAL",
    "Accounting",
    "LiveDump",
    "app_name",
    "decode_dump",
    "encode_dump",
]

log = logging.getLogger(__name__)

DUMP_INTERVAL = 1.0  # seconds: rates are live within two of them
MAX_DUMP = 500_000  # entries read per dump at most (the table's own limit is usually 262,144)
MAX_FLOWS = 200_000  # flows whose app is remembered; the oldest are forgotten first
MAX_RATES = 200  # apps in one rates snapshot, the busiest first

_NETLINK_NETFILTER = 12
_CT_GET = (1 << 8) | 1  # IPCTNL_MSG_CT_GET
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_CTA_MARK, _CTA_MARK_MASK = 8, 21
_NLMSG = struct.Struct("=IHHII")
_NFGEN = struct.Struct("=BBH")
_NLA = struct.Struct("=HH")
_RECV_SIZE = 1 << 18
_TIMEOUT = 2.0  # a dump that has not answered by then is abandoned until the next tick

Key = tuple[str, str, int, str, int]  # proto, src, sport, dst, dport: as the log row has them


def encode_dump(seq: int, mark: int = ALLOW_MARK, mask: int = MARK_MASK) -> bytes:
    """An IPCTNL_MSG_CT_GET dump request of every family's entries whose mark, under `mask`,
    is `mark`: the kernel filters (ctnetlink_filter_match), so nothing else is read."""
    body = b"".join(
        _NLA.pack(8, kind) + struct.pack("!I", value)
        for kind, value in ((_CTA_MARK, mark), (_CTA_MARK_MASK, mask))
    )
    size = _NLMSG.size + _NFGEN.size + len(body)
    header = _NLMSG.pack(size, _CT_GET, _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0)
    return header + _NFGEN.pack(socket.AF_UNSPEC, 0, 0) + body


def decode_dump(data: bytes, seq: int) -> tuple[list[FlowEnd], bool]:
    """The entries in one datagram of a dump answer, and whether the dump is done. Entries
    without counters (begun before accounting was on) are left out. Raises ValueError on a
    malformed message and OSError when the kernel refused the request."""
    entries, done = read_dump(data, seq)
    ends = [end for end in map(_flow_end, entries) if end is not None]
    return ends, done


# FlowEnd of an Entry that `ctwire` gave again (a flow unchanged since the last dump), by the
# Entry's identity: the Entry is held here, so its id cannot name another meanwhile. Kept as
# `ctwire` keeps its entries: those of this dump and of the one before (`_new_dump`).
_ENDS: dict[int, tuple[Entry, FlowEnd | None]] = {}
_ENDS_BEFORE: dict[int, tuple[Entry, FlowEnd | None]] = {}
_ENDS_MAX = 1 << 17
_ENDS_ROTATE = 1 << 16


def _new_dump() -> None:
    """A dump begins: as `ctwire.new_dump`, with the same bound."""
    global _ENDS, _ENDS_BEFORE  # two generations, swapped
    if len(_ENDS) >= _ENDS_ROTATE:
        _ENDS_BEFORE, _ENDS = _ENDS, {}
    new_dump()


def _flow_end(entry: Entry) -> FlowEnd | None:
    ends = _ENDS
    known = ends.get(id(entry))
    if known is not None and known[0] is entry:
        return known[1]
    before = _ENDS_BEFORE.get(id(entry))
    end = before[1] if before is not None and before[0] is entry else flow_end(entry)
    if len(ends) >= _ENDS_MAX:
        ends.clear()
    ends[id(entry)] = (entry, end)
    return end


class LiveDump:
    """A ctnetlink socket of its own for the periodic dump (the DESTROY reader's socket takes
    events; a dump's answer on it would be mixed with them). Blocking, with a timeout: it runs
    in the log writer, whose loop has nothing more urgent than a second-old batch."""

    def __init__(self) -> None:
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER)
            self._sock.settimeout(_TIMEOUT)
        except OSError as exc:
            raise BackendUnavailable(
                f"cannot open a ctnetlink socket for live byte counts: {exc.strerror or exc} "
                "(try: modprobe nf_conntrack_netlink)"
            ) from None
        self._seq = 0
        self.truncated = 0  # dumps cut at MAX_DUMP entries

    def close(self) -> None:
        self._sock.close()

    def dump(self) -> list[FlowEnd]:
        """The counters of every flow snitch allowed that conntrack still tracks. OSError
        (TimeoutError included) when the kernel did not answer in full."""
        self._seq = seq = (self._seq % 0x7FFFFFFF) + 1
        _new_dump()
        self._sock.send(encode_dump(seq))
        entries: list[FlowEnd] = []
        while True:
            data = self._sock.recv(_RECV_SIZE)
            try:
                got, done = decode_dump(data, seq)
            except ValueError as exc:
                raise OSError(f"conntrack dump: {exc}") from None
            entries += got
            if done:
                return entries
            if len(entries) >= MAX_DUMP:
                self.truncated += 1
                self._drain(seq)
                return entries

    def _drain(self, seq: int) -> None:
        """Read the rest of a dump we stopped taking, so the next one starts clean."""
        for _ in range(100_000):
            if decode_dump(self._sock.recv(_RECV_SIZE), seq)[1]:
                return


def app_name(exe: object, uid: object) -> str:
    """The app a log row counts for: its executable, or `kernel` / `uid N` when there is none
    (the same as `queries.read_top`)."""
    if isinstance(exe, str) and exe:
        return exe
    return "kernel" if uid is None else f"uid {uid}"


class _Owner(NamedTuple):
    """Whose a flow's bytes are. A named tuple, not a dataclass: it keys the rates and the
    rollups and is looked up for every row and every counted entry, and a dataclass's hash and
    equality are Python-level calls where a tuple's are C."""

    app: str
    uid: int  # -1: no user (the kernel's own flows)


_OWNERS_MAX = 4096  # (exe, uid) pairs whose _Owner is kept; all dropped at once when full


class Accounting:
    """Per-app deltas from counters that only grow: remembers the app of each allowed flow
    (from its log row) and the counters it last read, and adds what grew to the app's minute
    and to the current rates window. Pure: the caller passes the time in."""

    def __init__(self, max_flows: int = MAX_FLOWS) -> None:
        self.max_flows = max_flows
        self._owners: dict[Key, _Owner] = {}
        self._seen: dict[Key, tuple[int, int]] = {}
        self._gone: set[Key] = set()  # read before, missing from the last dump
        self._minutes: dict[tuple[int, str, int], list[int]] = {}
        self._window: dict[_Owner, list[int]] = {}
        self._totals: dict[_Owner, list[int]] = {}
        self._window_start: float | None = None
        self._owner_of: dict[tuple[object, object], _Owner] = {}  # (exe, uid) of a row
        self.unknown = 0  # counted flows whose row never came
        self.rates: tuple[AppRate, ...] = ()
        self.rates_seq = 0
        self._taken = True

    def learn(self, rows: Iterable[Sequence[object]]) -> None:
        """Log rows as `store.log_row` makes them: each counts as an attempt of its app, and
        an allowed one's tuple is remembered so that its bytes count for the app."""
        owners, seen, owner_of = self._owners, self._seen, self._owner_of
        window = self._window
        for row in rows:
            when, _, exe, uid, _, proto, src, sport, dst, dport, _, _, action = row[:13]
            owner = owner_of.get((exe, uid))
            if owner is None:
                owner = self._owner(exe, uid)
            slot = self._minute(_as_float(when), owner)
            counts = window.get(owner)
            if counts is None:
                counts = window[owner] = [0, 0, 0, 0]
            slot[2] += 1
            counts[2] += 1
            if action != "allow":
                slot[3] += 1
                counts[3] += 1
                continue
            key: Key = (
                str(proto),
                str(src),
                sport if isinstance(sport, int) else 0,
                str(dst),
                dport if isinstance(dport, int) else 0,
            )
            owners.pop(key, None)
            owners[key] = owner  # the newest at the end: the oldest go first
            seen.pop(key, None)  # a reused tuple is a new flow
        while len(owners) > self.max_flows:
            del owners[next(iter(owners))]

    def _owner(self, exe: object, uid: object) -> _Owner:
        owner = _Owner(app_name(exe, uid), uid if isinstance(uid, int) else -1)
        if len(self._owner_of) >= _OWNERS_MAX:
            self._owner_of.clear()
        self._owner_of[(exe, uid)] = owner
        return owner

    def on_dump(self, entries: Iterable[FlowEnd], now: float) -> None:
        """Counters of the open flows: what grew since the last read counts now."""
        present: set[Key] = set()
        add = present.add
        owners, seen = self._owners, self._seen
        for entry in entries:
            key = entry.key
            if key is None:
                key = _key(entry)
            # Most entries did not grow since the last dump (a closed flow waits out its
            # timeout): known and unchanged, they are only present.
            unchanged = seen.get(key) == (entry.bytes_out, entry.bytes_in) and key in owners
            if unchanged or self._count(key, entry, now):
                add(key)
        # A flow missing from two dumps ended and its end was lost (or it never ends here):
        # forget its last counters. One dump's grace lets a pending end take its last bytes.
        missing = seen.keys() - present
        for key in missing & self._gone:
            seen.pop(key, None)
        self._gone = missing - self._gone

    def on_end(self, end: FlowEnd, now: float) -> None:
        """A flow's last counters (a DESTROY event): what was not counted yet counts now."""
        key = _key(end)
        self._count(key, end, now)
        self._seen.pop(key, None)
        self._owners.pop(key, None)

    def _count(self, key: Key, entry: FlowEnd, now: float) -> bool:
        owner = self._owners.get(key)
        if owner is None:
            self.unknown += 1
            return False
        out0, in0 = self._seen.get(key, (0, 0))
        d_out, d_in = entry.bytes_out - out0, entry.bytes_in - in0
        d_out, d_in = (d_out if d_out > 0 else 0), (d_in if d_in > 0 else 0)
        self._seen[key] = (entry.bytes_out, entry.bytes_in)
        if d_out or d_in:
            slot = self._minute(now, owner)
            slot[0] += d_out
            slot[1] += d_in
            for table in (self._window, self._totals):
                acc = table.get(owner)
                if acc is None:
                    acc = table[owner] = [0, 0, 0, 0]
                acc[0] += d_out
                acc[1] += d_in
        return True

    def _minute(self, when: float, owner: _Owner) -> list[int]:
        return self._minutes.setdefault((int(when // 60), owner.app, owner.uid), [0, 0, 0, 0])

    def tick(self, now: float) -> tuple[AppRate, ...]:
        """Close the rates window: each app's bytes since the last tick and their rate. A
        window whose rates were not taken yet (`take_rates`: no batch went by) stays open and
        grows, so every byte is in exactly one snapshot that reaches snitchd."""
        start = self._window_start
        if start is None:
            self._window_start = now
            return self.rates
        if not self._taken or now <= start:
            return self.rates
        self._window_start = now
        window, self._window = self._window, {}
        seconds = now - start
        open_flows: dict[_Owner, int] = {}
        for key in self._seen:
            owner = self._owners.get(key)
            if owner is not None:
                open_flows[owner] = open_flows.get(owner, 0) + 1
        owners = set(window) | set(open_flows)
        rates = [
            AppRate(
                app=o.app,
                uid=o.uid,
                bytes_out=window.get(o, [0, 0])[0],
                bytes_in=window.get(o, [0, 0])[1],
                seconds=seconds,
                flows=open_flows.get(o, 0),
                total_out=self._totals.get(o, [0, 0])[0],
                total_in=self._totals.get(o, [0, 0])[1],
                attempts=window.get(o, [0, 0, 0, 0])[2],
                blocked=window.get(o, [0, 0, 0, 0])[3],
            )
            for o in owners
        ]
        rates.sort(key=lambda r: (-(r.bytes_out + r.bytes_in), -r.flows, r.app))
        self.rates = tuple(rates[:MAX_RATES])
        self.rates_seq += 1
        self._taken = False
        return self.rates

    def restart_window(self, now: float) -> None:
        """A new rates window from `now` on, what the old one held dropped: no rates are made
        while nobody watches (`logwriter.child` restarts the window at each of its reads then),
        so the first window of a live view holds what was counted since the last read, and the
        windows it sees add up to the totals' growth. The totals and the rollups are kept."""
        self._window = {}
        self._window_start = now
        self._taken = True

    def take_rates(self) -> tuple[tuple[AppRate, ...], int]:
        """The latest snapshot and its number, for a `Done` on its way to snitchd."""
        self._taken = True
        return self.rates, self.rates_seq

    def take_rollup(self) -> list[TrafficMinute]:
        """What to add to the per-minute rollups since the last take."""
        minutes, self._minutes = self._minutes, {}
        return [
            TrafficMinute(minute, app, uid, v[0], v[1], v[2], v[3])
            for (minute, app, uid), v in minutes.items()
        ]

    def give_back(self, rollup: list[TrafficMinute]) -> None:
        """A rollup the store could not take: kept for the next write."""
        for m in rollup:
            slot = self._minutes.setdefault((m.minute, m.app, m.uid), [0, 0, 0, 0])
            for i, value in enumerate((m.bytes_out, m.bytes_in, m.connections, m.blocked)):
                slot[i] += value


def _key(entry: FlowEnd) -> Key:
    if entry.key is not None:  # decoded once per tuple (`ctwire`), not per dump
        return entry.key
    return (entry.proto.value, str(entry.src), entry.sport, str(entry.dst), entry.dport)


def _as_float(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0
