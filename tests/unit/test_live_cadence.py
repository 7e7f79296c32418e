"""When the log writer reads the open flows' counters (`LogWriter.on_tick`): every second while
a live view is open, a few times a minute otherwise, and what users see stays right either way:
the per-minute rollups count bytes in the minute they flowed, and a live view that opens late
gets rates whose windows add up to what was counted.

The dump is a stand-in that returns counters (the kernel half is tests/integration/
test_monitor.py); the writer, its accounting and its store are real."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address
from multiprocessing import Pipe
from pathlib import Path

import pytest

from snitch_common.records import Attribution, Flow, Process, Proto
from snitch_common.rules import Action
from snitchd.logwriter.child import IDLE_DUMP_INTERVAL, LogWriter
from snitchd.logwriter.conntrack import FlowEnd
from snitchd.logwriter.protocol import AppRate, Batch
from snitchd.store import Decision, Store, log_row

MINUTE = 1_700_000_040.0  # a minute's start
CLIENT, SERVER = IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2")
EXE = "/usr/bin/app"


class Counters:
    """Stands in for `livebytes.LiveDump`: one open flow whose counters the test sets."""

    def __init__(self) -> None:
        self.sent = 0
        self.reads: list[float] = []
        self.now = 0.0

    def dump(self) -> list[FlowEnd]:
        self.reads.append(self.now)
        return [FlowEnd(Proto.TCP, CLIENT, 40000, SERVER, 443, self.sent, 0, 1, 1)]


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[tuple[LogWriter, Counters]]:
    ours, _theirs = Pipe()
    store = Store(tmp_path / "snitch.db")
    try:
        writer = LogWriter(ours, store)
        counters = Counters()
        writer.live = counters  # type: ignore[assignment]  # the stand-in has what is used
        yield writer, counters
    finally:
        store.close()


def flow_row(when: float) -> tuple[object, ...]:
    """The flow's log row, as snitchd hands it over."""
    flow = Flow(Proto.TCP, CLIENT, 40000, SERVER, 443, "veth0")
    proc = Process(Attribution.PROCESS, pid=7, uid=1000, exe=EXE)
    return log_row(Decision(when, flow, proc, Action.ALLOW, None, "default"))


def tick(writer: LogWriter, counters: Counters, now: float) -> None:
    counters.now = now
    writer.on_tick(now)


def minutes(writer: LogWriter) -> dict[float, int]:
    """bytes out per minute start, from the rollup table the 1 h chart reads."""
    rows = writer.store.db.execute(
        "SELECT minute, bytes_out FROM traffic_minute WHERE app = ?", (EXE,)
    )
    return {minute * 60.0: out for minute, out in rows}


def test_without_a_live_view_counters_are_read_three_times_a_minute(
    writer: tuple[LogWriter, Counters],
) -> None:
    w, counters = writer
    w.handle(Batch(1, [flow_row(MINUTE)]))
    for second in range(120):
        tick(w, counters, MINUTE + second + 0.5)
    assert IDLE_DUMP_INTERVAL == 20.0
    assert counters.reads == [MINUTE + s + 0.5 for s in (0, 20, 40, 60, 80, 100)]


def test_with_a_live_view_counters_are_read_every_tick(
    writer: tuple[LogWriter, Counters],
) -> None:
    w, counters = writer
    w.handle(Batch(1, [flow_row(MINUTE)], live=True))
    for second in range(30):
        tick(w, counters, MINUTE + second + 0.5)
    assert len(counters.reads) == 30
    w.handle(Batch(2))  # the view closed
    for second in range(30, 60):
        tick(w, counters, MINUTE + second + 0.5)
    assert counters.reads[30:] == [MINUTE + 40.5]


def test_idle_reads_count_bytes_in_the_minute_they_flowed(
    writer: tuple[LogWriter, Counters],
) -> None:
    w, counters = writer
    w.handle(Batch(1, [flow_row(MINUTE)]))
    sent_by = {0: 0, 30: 1000, 59: 3000, 61: 3500, 119: 9000}  # second -> bytes sent by then
    for second in range(130):
        counters.sent = max(v for s, v in sent_by.items() if s <= second)
        tick(w, counters, MINUTE + second + 0.5)
    w.handle(Batch(2))  # writes the rollups
    assert minutes(w) == {MINUTE: 3000, MINUTE + 60: 6000}


def test_a_view_opened_late_sees_windows_that_add_up_to_the_totals(
    writer: tuple[LogWriter, Counters],
) -> None:
    w, counters = writer
    w.handle(Batch(1, [flow_row(MINUTE)]))
    for second in range(35):  # idle: read at 0.5 and 20.5
        counters.sent = 100 * second
        tick(w, counters, MINUTE + second + 0.5)
    total_before = 100 * 20  # what the last idle read counted
    windows: list[AppRate] = []
    seq = 0
    for n, second in enumerate(range(35, 45)):
        counters.sent = 100 * second
        done = w.handle(Batch(2 + n, live=True))
        if done.rates_seq != seq:
            seq = done.rates_seq
            windows += [r for r in done.rates if r.app == EXE]
        tick(w, counters, MINUTE + second + 0.5)
    assert len(counters.reads) == 2 + 10
    first = windows[0]
    assert first.seconds == pytest.approx(35.5 - 20.5), "the first window runs from the last read"
    assert first.flows == 1
    assert sum(r.bytes_out for r in windows) == windows[-1].total_out - total_before
    assert windows[-1].total_out == 100 * 43  # the last read handed over: at second 43
    assert all(r.seconds == pytest.approx(1.0) for r in windows[1:])
