"""The event log's hand-over to a real log writer process, when snitchd stops in the middle
of one."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from snitch_common.records import Attribution, Flow, Process, Proto
from snitch_common.rules import Action
from snitchd.events import EventLog
from snitchd.logwriter.parent import Recorder
from snitchd.store import Decision, LogQuery, Store

NOW = 1_700_000_000.0


def decision(sport: int) -> Decision:
    flow = Flow(Proto.TCP, IPv4Address("192.0.2.1"), sport, IPv4Address("192.0.2.2"), 80, "v0")
    proc = Process(Attribution.PROCESS, pid=7, uid=1000, exe="/usr/bin/curl")
    return Decision(NOW, flow, proc, Action.ALLOW, None, "default")


async def test_a_hand_over_cancelled_midway_keeps_the_writer_to_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """snitchd stopping cancels the periodic hand-over while its worker thread waits for the
    writer's answer; the last hand-over then came at once. Two threads waited on the one
    connection: one took the other's answer, called the writer lost, and the other waited
    the full answer timeout (60 s) in poll, so snitchd hung on its way out (CI: a stop after
    the bus was lost took over 30 s). The second hand-over now waits for the first."""
    monkeypatch.setattr("snitchd.events.ANSWER_TIMEOUT", 8.0)
    store = Store(tmp_path / "snitch.db")
    recorder = Recorder(str(tmp_path / "snitch.db"))
    events = EventLog(store, recorder)
    holder = sqlite3.connect(tmp_path / "snitch.db", isolation_level=None)
    try:
        await events.flush()  # the writer is up
        holder.execute("BEGIN IMMEDIATE")  # the next batch waits in the writer (≤ 5 s)
        events.record(decision(40000))
        first = asyncio.create_task(events.flush())
        await asyncio.sleep(0.5)
        first.cancel()
        events.record(decision(40001))
        last = asyncio.create_task(events.flush())
        await asyncio.sleep(0.5)
        holder.execute("ROLLBACK")
        await asyncio.wait_for(last, 7)
    finally:
        holder.close()
        recorder.close()
        rows = store.connections(LogQuery(limit=10))
        store.close()
    assert events.last_error == "" and recorder.starts == 1
    assert sorted(r["sport"] for r in rows) == [40000, 40001]


async def test_the_last_hand_over_ends_a_stuck_writer_within_its_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """snitchd's rules are gone (or hold every flow) until it exits, and it waited for the
    last hand-over: from a writer that did not answer (stuck on its disk; here stopped), a
    minute (`ANSWER_TIMEOUT`), and as long again behind a hand-over cancelled midway, whose
    thread `asyncio.run` waits for. Now both give up by the stop's deadline, the writer is
    ended, and both batches' rows are said lost (the cancelled one's were dropped unsaid)."""
    store = Store(tmp_path / "snitch.db")
    recorder = Recorder(str(tmp_path / "snitch.db"))
    events = EventLog(store, recorder)
    loop = asyncio.get_running_loop()
    try:
        await events.flush()  # the writer is up
        assert recorder.pid is not None
        os.kill(recorder.pid, signal.SIGSTOP)  # ours: killed by recorder.close() if need be
        events.record(decision(40000))
        cancelled = asyncio.create_task(events.flush())
        await asyncio.sleep(0.5)
        cancelled.cancel()
        events.record(decision(40001))
        began = loop.time()
        await asyncio.wait_for(events.last_flush(2.0), 90)
        # What asyncio.run does on snitchd's way out: wait for the cancelled one's thread.
        await asyncio.wait_for(loop.shutdown_default_executor(), 90)
        took = loop.time() - began
    finally:
        recorder.close()
        store.close()
    assert took < 6, f"the last hand-over took {took:.1f} s"
    assert recorder.starts == 1 and recorder.pid is None  # ended, and none started again
    lost = [r.getMessage() for r in caplog.records if "lost" in r.getMessage()]
    assert lost == [
        "connection log: 2 row(s) lost, snitchd stopped without writing them: "
        "connection log writer not asked: snitchd stopped waiting for it"
    ], lost
