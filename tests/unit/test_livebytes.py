"""Live byte accounting, the pure half: the dump request and answer, the per-app deltas, the
rollups in a real store file and the queries the monitor reads them with.

The kernel half (the mark filter, counters of open flows) is tests/integration/test_monitor.py.
"""

from __future__ import annotations

import socket
import sqlite3
import struct
from ipaddress import ip_address
from pathlib import Path

import pytest

from snitch_common.records import Proto
from snitchd.logwriter.conntrack import FlowEnd
from snitchd.logwriter.livebytes import Accounting, app_name, decode_dump, encode_dump
from snitchd.netfilter import ALLOW_MARK, MARK_MASK
from snitchd.queries import Period, read_apps, read_top, read_traffic
from snitchd.store import Store, TrafficMinute
from tests.unit.test_traffic_codec import KERNEL_TCP_END  # a real kernel message

NOW = 1_700_000_040.0  # on a minute boundary
NLMSG = struct.Struct("=IHHII")


def row(
    key: tuple[str, str, int, str, int],
    exe: str | None = "/usr/bin/app",
    uid: int | None = 1000,
    action: str = "allow",
    when: float = NOW,
) -> tuple[object, ...]:
    """A log row as `store.log_row` makes it."""
    proto, src, sport, dst, dport = key
    return (when, 42, exe, uid, "exact", proto, src, sport, dst, dport, "", None, action, None, "")


def counts(key: tuple[str, str, int, str, int], out: int, into: int) -> FlowEnd:
    proto, src, sport, dst, dport = key
    return FlowEnd(Proto(proto), ip_address(src), sport, ip_address(dst), dport, out, into, 1, 1)


A = ("tcp", "192.0.2.1", 40000, "192.0.2.2", 443)
B = ("tcp", "192.0.2.1", 40001, "192.0.2.2", 443)


def test_dump_request_asks_the_kernel_to_filter_by_our_allow_mark() -> None:
    data = encode_dump(7)
    length, kind, flags, seq, _ = NLMSG.unpack_from(data)
    assert (length, kind, seq) == (len(data), 0x101, 7)
    assert flags == 0x301  # NLM_F_REQUEST | NLM_F_DUMP
    assert data[16] == socket.AF_UNSPEC  # every family
    attrs = {}
    off = 20
    while off < len(data):
        size, attr = struct.unpack_from("=HH", data, off)
        attrs[attr] = struct.unpack_from("!I", data, off + 4)[0]
        off += size
    assert attrs == {8: ALLOW_MARK, 21: MARK_MASK}  # CTA_MARK, CTA_MARK_MASK


def test_dump_answer_is_decoded_until_done_and_other_sequences_are_skipped() -> None:
    entry = bytearray(KERNEL_TCP_END)
    struct.pack_into("=HHI", entry, 4, 0x100, 2, 9)  # a dump entry (CT_NEW, multi) of seq 9
    other = bytearray(entry)
    struct.pack_into("=I", other, 8, 8)  # an answer to an older request
    done = NLMSG.pack(20, 3, 2, 9, 0) + b"\0\0\0\0"
    entries, finished = decode_dump(bytes(entry) + bytes(other), 9)
    assert not finished
    assert [(e.sport, e.dport, e.bytes_out, e.bytes_in) for e in entries] == [
        (34598, 8000, 330, 266)
    ]
    assert decode_dump(done, 9) == ([], True)
    refused = NLMSG.pack(36, 2, 0, 9, 0) + struct.pack("=i", -1) + bytes(16)
    with pytest.raises(OSError, match="refused"):
        decode_dump(refused, 9)


def test_bytes_count_once_across_dumps_and_the_end() -> None:
    acc = Accounting()
    acc.learn([row(A)])
    acc.on_dump([counts(A, 1000, 100)], NOW)
    acc.on_dump([counts(A, 3000, 300)], NOW + 1)
    acc.on_end(counts(A, 3500, 350), NOW + 2)
    (m,) = acc.take_rollup()
    assert (m.app, m.uid, m.bytes_out, m.bytes_in, m.connections, m.blocked) == (
        "/usr/bin/app",
        1000,
        3500,
        350,
        1,
        0,
    )


def test_a_flow_counted_before_its_row_came_counts_all_its_bytes_once_the_row_comes() -> None:
    acc = Accounting()
    acc.on_dump([counts(A, 1000, 0)], NOW)
    assert acc.take_rollup() == []
    acc.learn([row(A)])
    acc.on_dump([counts(A, 1500, 0)], NOW + 1)
    assert sum(m.bytes_out for m in acc.take_rollup()) == 1500


def test_blocked_attempts_count_but_never_own_bytes() -> None:
    acc = Accounting()
    acc.learn([row(A, action="deny"), row(B, action="reject")])
    acc.on_dump([counts(A, 999, 0)], NOW)
    rollup = acc.take_rollup()
    assert [(m.connections, m.blocked, m.bytes_out) for m in rollup] == [(2, 2, 0)]


def test_rates_are_the_bytes_of_the_window_and_the_totals_grow() -> None:
    acc = Accounting()
    acc.learn([row(A), row(B, exe="/usr/bin/other")])
    acc.tick(NOW)
    acc.on_dump([counts(A, 2000, 0), counts(B, 100, 0)], NOW + 1)
    first = acc.tick(NOW + 2)
    acc.take_rates()
    assert [(r.app, r.bytes_out, r.seconds, r.flows) for r in first] == [
        ("/usr/bin/app", 2000, 2.0, 1),
        ("/usr/bin/other", 100, 2.0, 1),
    ]
    acc.on_dump([counts(A, 2500, 0), counts(B, 100, 0)], NOW + 3)
    second = {r.app: r for r in acc.tick(NOW + 4)}
    acc.take_rates()
    assert second["/usr/bin/app"].bytes_out == 500
    assert second["/usr/bin/app"].total_out == 2500
    assert second["/usr/bin/other"].bytes_out == 0


def test_a_window_not_handed_over_grows_until_it_is() -> None:
    """Ticks come every second, batches every half second, but a slow batch can let two
    ticks pass: the first window's bytes must not vanish from the rates."""
    acc = Accounting()
    acc.learn([row(A)])
    acc.tick(NOW)
    acc.on_dump([counts(A, 1000, 0)], NOW + 0.5)
    (first,) = acc.tick(NOW + 1)
    acc.on_dump([counts(A, 1500, 0)], NOW + 1.5)
    assert acc.tick(NOW + 2) == (first,)  # not taken yet: the window stays open
    acc.take_rates()
    acc.on_dump([counts(A, 1600, 0)], NOW + 2.5)
    (second,) = acc.tick(NOW + 3)
    assert (first.bytes_out, second.bytes_out, second.seconds) == (1000, 600, 2.0)


def test_a_reused_tuple_is_a_new_flow() -> None:
    acc = Accounting()
    acc.learn([row(A)])
    acc.on_dump([counts(A, 5000, 0)], NOW)
    acc.learn([row(A, exe="/usr/bin/second")])  # the old flow's end was lost
    acc.on_dump([counts(A, 700, 0)], NOW + 1)
    by_app = {m.app: m.bytes_out for m in acc.take_rollup()}
    assert by_app["/usr/bin/second"] == 700


def test_flows_remembered_are_bounded() -> None:
    acc = Accounting(max_flows=10)
    acc.learn([row(("udp", "192.0.2.1", port, "192.0.2.2", 53)) for port in range(100)])
    assert len(acc._owners) == 10


def test_app_name_matches_top() -> None:
    assert app_name("/usr/bin/x", 5) == "/usr/bin/x"
    assert app_name(None, None) == "kernel"
    assert app_name(None, 7) == "uid 7"


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    """A store with two apps' rollups over the last 40 days (hours) and the last hour."""
    path = tmp_path / "snitch.db"
    store = Store(path)
    try:
        base = int(NOW // 60)
        store.add_traffic(
            [TrafficMinute(base - i, "/usr/bin/big", 1000, 1000, 10, 1, 0) for i in range(60)]
            + [TrafficMinute(base - i, "/usr/bin/small", 2000, 10, 1, 1, 1) for i in range(60)]
            + [TrafficMinute(base - 60 * 24 * 10, "/usr/bin/old", 1000, 5, 5, 1, 0)]
        )
        store.add_traffic([TrafficMinute(base, "/usr/bin/big", 1000, 500, 0, 0, 0)])
        store.note_apps({"/usr/bin/big": (NOW - 99, None)})
    finally:
        store.close()
    return path


def test_rollups_add_up_per_minute_and_per_hour(filled: Path) -> None:
    conn = sqlite3.connect(filled)
    minute = int(NOW // 60)
    assert conn.execute(
        "SELECT bytes_out FROM traffic_minute WHERE minute = ? AND app = '/usr/bin/big'", [minute]
    ).fetchone() == (1500,)
    (hours,) = conn.execute("SELECT sum(bytes_out) FROM traffic_hour WHERE app = '/usr/bin/big'")
    assert hours == (60 * 1000 + 500,)


def test_traffic_report_is_bounded_and_sums_to_the_rollups(filled: Path) -> None:
    conn = sqlite3.connect(filled)
    for period in Period:
        report = read_traffic(conn, period, NOW, None)
        assert len(report.total.points) <= 180
        assert all(len(s.points) <= 180 for s in report.apps)
    hour = read_traffic(conn, Period.HOUR, NOW, None)
    assert [s.app for s in hour.apps] == ["/usr/bin/big", "/usr/bin/small"]
    assert hour.total.bytes_out == 60 * 1000 + 500 + 60 * 10
    month = read_traffic(conn, Period.MONTH, NOW, None)
    assert "/usr/bin/old" in [s.app for s in month.apps]
    mine = read_traffic(conn, Period.HOUR, NOW, 2000)
    assert [s.app for s in mine.apps] == ["/usr/bin/small"]
    assert mine.total.bytes_out == 600


def test_apps_totals_sort_by_bytes_and_say_when_first_seen(filled: Path) -> None:
    conn = sqlite3.connect(filled)
    apps = read_apps(conn, Period.DAY, NOW, None, 10)
    assert [(a.app, a.bytes_out, a.connections, a.blocked) for a in apps] == [
        ("/usr/bin/big", 60_500, 60, 0),
        ("/usr/bin/small", 600, 60, 60),
    ]
    assert apps[0].first_seen == NOW - 99
    assert [a.app for a in read_apps(conn, Period.DAY, NOW, 2000, 10)] == ["/usr/bin/small"]


def test_top_sorts_by_the_apps_total_bytes_not_one_rows(tmp_path: Path) -> None:
    """Issue 19: `ORDER BY bytes_out + bytes_in` named the table's columns, so one row's bytes
    decided the order. Here `many` has more bytes in all, in small rows; `one` a single big row."""
    conn = sqlite3.connect(tmp_path / "x.db")
    conn.execute(
        "CREATE TABLE connections (id INTEGER PRIMARY KEY, time REAL, exe TEXT, uid INT, "
        "action TEXT, bytes_out INT, bytes_in INT)"
    )
    rows = [(NOW, "/usr/bin/one", 1, "allow", 1000, 0)]
    rows += [(NOW, "/usr/bin/many", 1, "allow", 400, 0) for _ in range(5)]
    conn.executemany(
        "INSERT INTO connections (time, exe, uid, action, bytes_out, bytes_in) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )
    assert [r["app"] for r in read_top(conn, None, None, 10)] == ["/usr/bin/many", "/usr/bin/one"]
