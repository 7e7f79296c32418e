"""The log writer: the child process behind `parent`, which owns every write to the log.

It writes snitchd's batches to SQLite, reads conntrack's DESTROY events (`conntrack.FlowEnds`)
and joins each flow's byte counters to its row, dumps the counters of open flows (`livebytes`:
every second while a live view is open, three times a minute otherwise) into per-app rollups
and rates, and prunes the log. A module of its own so that snitchd never imports what only the
child needs (the conntrack reader).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
import sys
import time
from multiprocessing.connection import Connection

from snitch_common.errors import SnitchError, StoreError
from snitchd.logwriter.conntrack import FlowEnd, FlowEnds, enable_accounting
from snitchd.logwriter.livebytes import DUMP_INTERVAL, Accounting, LiveDump
from snitchd.logwriter.protocol import Batch, Done
from snitchd.store import EndRow, Store

__all__ = ["IDLE_DUMP_INTERVAL", "LogWriter", "main"]

log = logging.getLogger(__name__)

MAX_ENDS = 100_000  # flow ends kept while the database refuses writes; the oldest go first
IDLE_DUMP_INTERVAL = 20.0  # seconds between live dumps while no live view is open: divides a
# minute, and is below the UDP and ICMP conntrack timeouts (30 s)


class LogWriter:
    """The child's side: one store, and the flow ends waiting for their rows."""

    def __init__(self, conn: Connection, store: Store) -> None:
        self.conn = conn
        self.store = store
        # A flow's end is joined one batch after the batch that was on its way when the end
        # came: its row (decided before it ended) is in that batch or the one after.
        self._ends_new: list[EndRow] = []
        self._ends_due: list[EndRow] = []
        self._live_new: list[FlowEnd] = []
        self._live_due: list[FlowEnd] = []
        self.accounting = Accounting()
        self.live: LiveDump | None = None
        self._live_failing = False
        self.live_wanted = False  # the last batch said a live view is open (`Batch.live`)
        self._last_dump: float | None = None
        self.stopped = asyncio.Event()

    def on_end(self, end: FlowEnd) -> None:
        """Per finished flow (a DESTROY event): kept for the batch after the next."""
        live = self._live_new
        live.append(end)
        if len(live) > MAX_ENDS + MAX_ENDS // 8:  # trimmed now and then, not per event
            del live[:-MAX_ENDS]
        proto, src, sport, dst, dport = end.key or (
            end.proto.value,
            str(end.src),
            end.sport,
            str(end.dst),
            end.dport,
        )
        ends = self._ends_new
        ends.append((end.bytes_out, end.bytes_in, time.time(), dst, dport, sport, src, proto))
        if len(ends) > MAX_ENDS + MAX_ENDS // 8:  # no batch for a while: the oldest go
            del ends[:-MAX_ENDS]

    def on_readable(self) -> None:
        try:
            self.conn.send(self.handle(self.conn.recv()))
        except (EOFError, OSError):  # snitchd is gone
            self.stopped.set()

    def on_tick(self, now: float | None = None) -> None:
        """Every DUMP_INTERVAL: read the open flows' counters when a read is due
        (`_dump_due`), and while a live view is open close the rates window. A dump that
        fails is said once and skipped: the flows' bytes count at the next one."""
        if now is None:
            now = time.time()
        live, read = self.live_wanted, False
        if self.live is not None and self._dump_due(now, live):
            try:
                entries = self.live.dump()
            except OSError as exc:
                if not self._live_failing:
                    log.warning("live byte counts skipped: %s", exc)
                self._live_failing = True
            else:
                self._live_failing = False
                last, self._last_dump = self._last_dump, now
                # What grew since the last read flowed between the two reads: counted at the
                # middle, so an idle read just after a minute starts counts for the minute
                # that ended (the rollups' unit), a read in the middle of one for that one.
                self.accounting.on_dump(entries, now if last is None else (last + now) / 2)
                read = True
        if live:
            self.accounting.tick(now)
        elif read or self.live is None:
            # No rates while nobody watches: the window starts again at each read, so a view's
            # first window holds what was counted since the last one (and no more).
            self.accounting.restart_window(now)

    def _dump_due(self, now: float, live: bool) -> bool:
        """Every tick while a live view is open (its rates are per second); else once each
        IDLE_DUMP_INTERVAL, at its multiples of the clock (so at each minute's start), or the
        next tick after one that failed. Reading every entry every second costs ~2 µs an
        entry, and a closed TCP flow's entry stays ~2 minutes: ~120 reads of a flow whose
        counters no longer move. The idle reads keep the per-minute rollups right (their
        bytes are counted in the minute they flowed) and read each UDP and ICMP entry
        (30 s timeouts) at least once before conntrack forgets it."""
        last = self._last_dump
        if live or last is None:
            return True
        return now // IDLE_DUMP_INTERVAL != last // IDLE_DUMP_INTERVAL

    def handle(self, batch: Batch) -> Done:
        self.live_wanted = batch.live
        due, self._ends_due, self._ends_new = self._ends_due, self._ends_new, []
        live_due, self._live_due, self._live_new = self._live_due, self._live_new, []
        try:
            with self.store.batch():  # whole or not at all: a failed batch comes again
                if batch.rows:
                    self.store.log_rows(batch.rows)
                ends = self.store.join_ends(due)
                if batch.retries:  # after the rows: a retry's attempt may be in this batch
                    self.store.record_retries(batch.retries)
                if batch.hits:
                    self.store.record_hits(batch.hits)
                if batch.apps:
                    self.store.note_apps(batch.apps)
                pruned = self.store.prune(*batch.prune) if batch.prune is not None else 0
        except StoreError as exc:
            self._ends_due[:0] = due
            del self._ends_due[:-MAX_ENDS]
            self._live_due[:0] = live_due  # the rows come again: so do their ends
            del self._live_due[:-MAX_ENDS]
            return self._done(Done(batch.seq, error=str(exc)))
        self._account(batch.rows, live_due)
        return self._done(Done(batch.seq, len(batch.rows), pruned, ends))

    def _account(self, rows: list[tuple[object, ...]], live_due: list[FlowEnd]) -> None:
        """The accounting learns the batch's flows before it takes the ends that were due: a
        flow's row comes in the batch on its way when it ended, or the next (see above). Only
        rows that were written count, so a batch sent again is not counted twice."""
        self.accounting.learn(rows)
        now = time.time()
        for end in live_due:
            self.accounting.on_end(end, now)
        rollup = self.accounting.take_rollup()
        try:
            self.store.add_traffic(rollup)
        except StoreError as exc:
            log.debug("traffic rollup kept for the next batch: %s", exc)
            self.accounting.give_back(rollup)

    def _done(self, done: Done) -> Done:
        rates, seq = self.accounting.take_rates()
        return dataclasses.replace(done, rates=rates, rates_seq=seq)


async def _serve(conn: Connection, database: str) -> None:
    try:
        store = Store(database)
    except StoreError as exc:
        conn.send(Done(0, error=str(exc)))
        return
    writer = LogWriter(conn, store)
    ends = FlowEnds(writer.on_end)
    loop = asyncio.get_running_loop()
    try:
        # Byte accounting before the answer: snitchd installs its queue rules only after it.
        try:
            ends.start(loop)
            enable_accounting()
        except SnitchError as exc:
            log.warning("per-app byte accounting is off: %s", exc)
        try:
            writer.live = LiveDump()
        except SnitchError as exc:
            log.warning("live byte counts are off: %s", exc)
        conn.send(Done(0))
        loop.add_reader(conn.fileno(), writer.on_readable)
        ticker = asyncio.create_task(_tick(writer), name="live-bytes")
        await writer.stopped.wait()
        ticker.cancel()
    finally:
        if writer.live is not None:
            writer.live.close()
        with contextlib.suppress(Exception):
            loop.remove_reader(conn.fileno())
        ends.close()
        store.close()


async def _tick(writer: LogWriter) -> None:
    while True:
        await asyncio.sleep(DUMP_INTERVAL)
        try:
            writer.on_tick()
        except Exception:  # a bug here must not stop the log: the rows matter more
            log.exception("live byte accounting failed")


# Objects made before the cyclic collector runs its youngest generation (CPython: 700).
GC_YOUNG = 20_000


def _tune_gc() -> None:
    """The writer makes several objects per flow (decoded entries, counters, rows unpickled)
    and keeps tens of thousands in its caches; at the default threshold the collector ran
    every few hundred flows and took ~12 % of the writer's CPU (bench/bench_micro.py,
    bench_writer: 38.4 -> 33.1 µs a flow). Its data makes no cycles, so collections are
    rarer, and what exists at start (the modules, snitchd's objects when forked) is frozen
    out of them."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG, 20, 20)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    conn = Connection(int(args[0]))
    _tune_gc()
    try:
        asyncio.run(_serve(conn, args[1]))
    finally:
        conn.close()
    return 0
