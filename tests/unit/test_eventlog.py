"""The event log's hand-over to a real log writer process, when snitchd stops in the middle
of one."""

from __future__ import annotations

import asyncio
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
