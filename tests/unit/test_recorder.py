"""The log writer's side of `recorder` on a real store file: rows, hit counts, pruning, and
flow ends joined to their rows one batch late (the race it exists for)."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address
from multiprocessing import Pipe
from pathlib import Path

import pytest

from snitch_common.errors import StoreError
from snitch_common.records import Attribution, Flow, Process, Proto
from snitch_common.rules import Action, parse_rule
from snitchd.logwriter.child import LogWriter
from snitchd.logwriter.conntrack import FlowEnd
from snitchd.logwriter.parent import Recorder, RecorderGone
from snitchd.logwriter.protocol import Batch, Done
from snitchd.store import Decision, LogQuery, Store, log_row

NOW = 1_700_000_000.0
CLIENT, SERVER = IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2")


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[LogWriter]:
    ours, _theirs = Pipe()
    store = Store(tmp_path / "snitch.db")
    try:
        yield LogWriter(ours, store)
    finally:
        store.close()


def row(sport: int, t: float = NOW) -> tuple[object, ...]:
    flow = Flow(Proto.TCP, CLIENT, sport, SERVER, 80, "veth0")
    proc = Process(Attribution.PROCESS, pid=7, uid=1000, exe="/usr/bin/curl")
    return log_row(Decision(t, flow, proc, Action.ALLOW, None, "default"))


def end(sport: int, sent: int) -> FlowEnd:
    return FlowEnd(Proto.TCP, CLIENT, sport, SERVER, 80, sent, 41, 3, 2)


def logged(writer: LogWriter) -> dict[int, tuple[int | None, int | None]]:
    rows = writer.store.connections(LogQuery(limit=1000))
    return {r["sport"]: (r["bytes_out"], r["bytes_in"]) for r in rows}


def test_a_batch_is_written_and_answered_with_its_sequence_number(writer: LogWriter) -> None:
    assert writer.handle(Batch(5, [row(40000), row(40001)])) == Done(5, written=2)
    assert set(logged(writer)) == {40000, 40001}


def test_an_end_that_overtakes_its_row_is_joined_once_the_row_is_written(
    writer: LogWriter,
) -> None:
    """snitchd took its batch just before deciding the flow; the flow ended and its DESTROY
    event reached the writer before that batch did. Joining at once would miss the row (or
    hit an older flow with the same ports), so an end waits for the batch after the one that
    was on its way, which holds the row: snitchd takes it only once that one was answered."""
    writer.on_end(end(40000, 1000))
    assert writer.handle(Batch(1, [])).ends == 0  # on its way: the row is not in it
    assert writer.handle(Batch(2, [row(40000)])).ends == 1
    assert logged(writer) == {40000: (1000, 41)}


def test_an_end_joins_the_newest_row_of_its_five_tuple(writer: LogWriter) -> None:
    """A source port comes back: the counters belong to the flow that just ended."""
    writer.handle(Batch(1, [row(40000, NOW)]))
    writer.handle(Batch(2, [row(40000, NOW + 60)]))
    writer.on_end(end(40000, 500))
    writer.handle(Batch(3, []))
    writer.handle(Batch(4, []))
    rows = writer.store.connections(LogQuery())
    assert [(r["time"], r["bytes_out"]) for r in rows] == [(NOW, None), (NOW + 60, 500)]


def test_hit_counts_and_new_apps_reach_the_store(writer: LogWriter) -> None:
    record = writer.store.add_rule(parse_rule("allow port=80"), NOW)
    writer.handle(Batch(1, hits={record.id: (3, NOW + 1)}, apps={"/usr/bin/curl": (NOW, "ab")}))
    (listed,) = writer.store.rules()
    assert (listed.hits, listed.last_hit) == (3, NOW + 1)
    assert writer.store.known_apps() == {"/usr/bin/curl": "ab"}


def test_prune_keeps_the_log_within_its_limits(writer: LogWriter) -> None:
    """Only the writer writes the log, so snitchd prunes by asking it."""
    writer.handle(Batch(1, [row(1, NOW - 7200), row(2, NOW - 10), row(3, NOW - 5), row(4, NOW)]))
    done = writer.handle(Batch(2, prune=(NOW, 3600.0, 2)))
    assert done.pruned == 2
    assert set(logged(writer)) == {3, 4}


def test_a_locked_database_is_answered_with_an_error_and_nothing_is_lost(
    writer: LogWriter, tmp_path: Path
) -> None:
    """Another process holds the write lock past the busy timeout (5 s): the batch is refused
    with a clear error (snitchd keeps its rows and sends them again) and the flow ends wait."""
    writer.on_end(end(40000, 700))
    writer.handle(Batch(1, [row(40000)]))  # the end is due with the next batch
    holder = sqlite3.connect(tmp_path / "snitch.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        done = writer.handle(Batch(2, [row(40001)]))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert done.seq == 2 and done.written == 0
    assert done.error is not None and "locked" in done.error
    assert writer.handle(Batch(3, [row(40001)])).ends == 1  # snitchd's retry
    assert logged(writer) == {40000: (700, 41), 40001: (None, None)}


def test_a_writer_that_cannot_start_is_not_started_again_at_once(tmp_path: Path) -> None:
    """A database the writer cannot open (here: its folder is a file) fails each start; snitchd
    must not start a process twice a second for as long as that lasts."""
    (tmp_path / "file").write_text("")
    recorder = Recorder(str(tmp_path / "file" / "snitch.db"))
    try:
        with pytest.raises(StoreError, match="cannot open"):
            recorder.write(Batch(1), timeout=30)
        with pytest.raises(RecorderGone, match="trying again soon"):
            recorder.write(Batch(2), timeout=30)
        assert recorder.starts == 1 and recorder.pid is None
    finally:
        recorder.close()


def test_a_writer_that_cannot_even_be_spawned_is_a_store_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a package upgrade the interpreter path may be gone: the event log must get the
    error it handles (rows kept, retried later), not an OSError that would end snitchd."""
    recorder = Recorder(str(tmp_path / "snitch.db"))
    recorder.starts = 1  # not the first writer: spawned, not forked
    monkeypatch.setattr(sys, "executable", str(tmp_path / "gone" / "python3"))
    with pytest.raises(RecorderGone, match="cannot start the connection log writer"):
        recorder.write(Batch(1), timeout=30)
    assert recorder.pid is None


def test_a_batch_that_fails_part_way_writes_nothing_so_its_resend_writes_once(
    writer: LogWriter,
) -> None:
    """The rows were committed on their own: when a later step of the batch (here the rule
    hit counts, refused by a trigger) failed, snitchd kept the rows and sent them again with
    the next batch, and the log held them twice. A batch is now one transaction."""
    rule = writer.store.add_rule(parse_rule("allow port=80"), NOW, "test")
    db = writer.store.db.conn
    db.execute("CREATE TRIGGER refuse BEFORE UPDATE ON rules BEGIN SELECT RAISE(ABORT, 'no'); END")
    failed = writer.handle(Batch(1, [row(40000)], hits={rule.id: (1, NOW)}))
    assert failed.error is not None
    assert logged(writer) == {}
    db.execute("DROP TRIGGER refuse")
    assert writer.handle(Batch(2, [row(40000)], hits={rule.id: (1, NOW)})).written == 1
    assert list(logged(writer)) == [40000]


def test_ends_kept_while_no_batch_comes_are_bounded(
    writer: LogWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """snitchd sends no batch (stuck, or stopping): DESTROY events keep coming, and the ends
    waiting for a batch stay bounded, the newest kept."""
    monkeypatch.setattr("snitchd.logwriter.child.MAX_ENDS", 80)
    for sport in range(40000, 41000):
        writer.on_end(end(sport, 1))
    assert 80 <= len(writer._ends_new) <= 90 and 80 <= len(writer._live_new) <= 90
    assert writer._ends_new[-1][5] == 40999  # the newest (its source port) kept
