"""The connection log, snitchd's side: decisions are batched and handed to the log writer.

`record` is called per decision on the hot path and only makes its row and appends it; `run`
hands the batch every `interval` seconds (or sooner when it is full) to the writer process
(`logwriter.parent`) from a worker thread, which waits for the answer with the GIL released: SQLite
never blocks the queue reader, and never competes with it for the GIL. Listeners (the live
monitor over D-Bus) get each decision at once. A failed write is said once in the journal and
the batch kept for the next try, up to a bound: losing log rows under a broken disk is better
than growing without end. A writer that died is started again by the next batch (one that
could not start, after a pause).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from snitch_common.errors import StoreError
from snitchd.attempts import RowRef
from snitchd.logwriter.parent import Recorder
from snitchd.logwriter.protocol import AppRate, Batch, Done
from snitchd.store import Decision, Store, log_row

__all__ = ["Alert", "EventLog"]

log = logging.getLogger(__name__)

MAX_PENDING = 100_000
ANSWER_TIMEOUT = 60.0  # a locked database makes each write wait up to 5 s; 60 s means stuck
# The last hand-over, at stop: two 5 s waits on a locked database, and not the minute above.
STOP_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Alert:
    """Something the user should know even when no rule was involved: an app's first
    connection, an executable that changed under a pinned rule, rules changed behind
    snitch's back. `uid` says whose agents hear it (None: the admins')."""

    kind: str
    message: str
    time: float
    uid: int | None = None
    exe: str | None = None


class EventLog:
    def __init__(
        self, store: Store, recorder: Recorder, interval: float = 0.5, batch: int = 2000
    ) -> None:
        self._store = store
        self._recorder = recorder
        self._interval = interval
        self._batch = batch
        # Rows as the writer stores them (`log_row`), made as each decision is recorded: made in
        # the worker thread at flush time instead, 5,000 of them held the GIL for ~10 ms every
        # half second, and packets waited behind it.
        self._pending: list[tuple[object, ...]] = []
        self._hits: dict[int, tuple[int, float]] = {}
        self._retries: dict[RowRef, int] = {}
        self._apps: dict[str, tuple[float, str | None]] = {}
        self._seq = itertools.count(1)
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self.listeners: list[Callable[[Decision], None]] = []
        # The writer's per-app rates (issue 19), passed on once per new window (about 1 Hz).
        self.rate_listeners: list[Callable[[tuple[AppRate, ...]], None]] = []
        # Whether anyone watches them now: the writer reads live counters every second only then.
        self.live_wanted: Callable[[], bool] = lambda: False
        self._rates_seq = 0
        self.written = 0
        self.dropped = 0
        self.pruned = 0
        self._failing = False  # said once in the journal, not at every retry
        self.last_error = ""  # why the log is not written now (snitchctl status), "" if it is

    @property
    def backlog(self) -> int:
        """Rows waiting to be handed to the log writer (metrics: snitch_log_backlog)."""
        return len(self._pending)

    def record(self, decision: Decision) -> None:
        """Per decision, on the packet loop: its row (`log_row`), its rule's hit, listeners."""
        pending = self._pending
        pending.append(log_row(decision))
        rule_id = decision.rule_id
        if rule_id is not None:
            hits = self._hits
            count = hits[rule_id][0] if rule_id in hits else 0
            hits[rule_id] = (count + 1, decision.time)
        for listener in self.listeners:
            listener(decision)
        if len(pending) >= self._batch:
            self._wake.set()

    def retry(self, row: RowRef) -> None:
        """An attempt already logged as `row` was tried again with the same verdict: one more
        on that row's `retries`, no row of its own, no rule hit (`attempts`). Bounded by the
        attempts remembered: a row gets one entry here however often it is retried."""
        count = self._retries.get(row)
        if count is None and len(self._retries) >= MAX_PENDING:  # the writer is failing
            self.dropped += 1
            return
        self._retries[row] = (count or 0) + 1

    @property
    def writer_pid(self) -> int | None:
        return self._recorder.pid

    @property
    def writer_starts(self) -> int:
        return self._recorder.starts

    def note_app(self, exe: str, first_seen: float, sha256: str | None) -> None:
        self._apps[exe] = (first_seen, sha256)

    async def flush(self, prune: tuple[float, float, int] | None = None) -> None:
        """Hand over what is pending and wait until it is written; also the way to prune the
        log (`prune`: now, max_age seconds, max_rows), as only the writer writes the log."""
        async with self._lock:  # batches reach the writer in the order they were taken
            batch, self._pending = self._pending, []
            hits, self._hits = self._hits, {}
            apps, self._apps = self._apps, {}
            retries, self._retries = self._retries, {}
            self._store.record_memory_hits(hits)
            work = asyncio.ensure_future(
                asyncio.to_thread(self._write, batch, hits, apps, retries, prune)
            )
            try:
                await asyncio.wait((work,))  # never cancels `work`, never raises its error
            except asyncio.CancelledError:
                # snitchd stopping: the thread goes on (a thread cannot be cancelled), and its
                # outcome is still taken, so a batch it fails to write is kept like any other
                # (and `last_flush` counts it), not dropped unsaid.
                work.add_done_callback(lambda _: self._outcome(work, batch, apps, retries))
                raise
            self._outcome(work, batch, apps, retries)

    def _outcome(
        self,
        work: asyncio.Future[Done],
        batch: list[tuple[object, ...]],
        apps: dict[str, tuple[float, str | None]],
        retries: dict[RowRef, int],
    ) -> None:
        exc = work.exception()
        if isinstance(exc, StoreError):
            self._kept(exc, batch, apps, retries)
            return
        if exc is not None:  # a bug: said with its traceback, the rows lost with it
            log.error("connection log hand-over failed rows=%d", len(batch), exc_info=exc)
            return
        done = work.result()
        if self._failing:
            self._failing = False
            self.last_error = ""
            log.info("connection log written again rows=%d", done.written)
        self.written += done.written
        self.pruned += done.pruned
        if done.rates_seq != self._rates_seq:
            self._rates_seq = done.rates_seq
            for on_rates in self.rate_listeners:
                on_rates(done.rates)

    def _kept(
        self,
        exc: StoreError,
        batch: list[tuple[object, ...]],
        apps: dict[str, tuple[float, str | None]],
        retries: dict[RowRef, int],
    ) -> None:
        """A batch the writer did not take: its rows wait for the next hand-over."""
        log.log(
            # At stop no try comes again: `last_flush` says what is lost.
            logging.DEBUG if self._failing or self._recorder.stopping else logging.ERROR,
            "connection log write failed, rows kept for the next try rows=%d: %s",
            len(batch),
            exc,
        )
        self._failing = True
        self.last_error = str(exc)
        self._pending[:0] = batch
        self._apps.update(apps)
        for row, count in retries.items():
            self._retries[row] = self._retries.get(row, 0) + count
        overflow = len(self._pending) - MAX_PENDING
        if overflow > 0:
            del self._pending[:overflow]
            self.dropped += overflow

    async def last_flush(self, timeout: float = STOP_TIMEOUT) -> None:
        """The hand-over when snitchd stops, bounded by `timeout`: snitchd's rules are gone
        (or hold every new flow, fail-closed) until it has exited and systemd has started it
        again, and a writer stuck on a database locked for good made that wait a minute, or
        longer behind a hand-over cancelled midway. What the writer has not taken by then is
        lost, and said."""
        self._recorder.stop_by(time.monotonic() + timeout)
        await self.flush()
        if self._pending:
            log.error(
                "connection log: %d row(s) lost, snitchd stopped without writing them: %s",
                len(self._pending),
                self.last_error,
            )

    def _write(
        self,
        rows: list[tuple[object, ...]],
        hits: dict[int, tuple[int, float]],
        apps: dict[str, tuple[float, str | None]],
        retries: dict[RowRef, int],
        prune: tuple[float, float, int] | None,
    ) -> Done:
        batch = Batch(next(self._seq), rows, hits, apps, prune, retries, self.live_wanted())
        done = self._recorder.write(batch, ANSWER_TIMEOUT)
        if done.error is not None:
            raise StoreError(done.error)
        return done

    async def run(self) -> None:
        """Hand over a batch every interval, even an empty one: the writer joins a flow's end
        to its row one batch later (see `logwriter.parent`), so its clock must tick. The final flush
        happens in `flush` called at shutdown."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # a bug here must not end the task group: the firewall goes on
                log.exception("connection log hand-over failed")
