"""The connection log writer: decisions go to the store in batches, off the packet path.

`record` is called per decision on the hot path and only appends to a list; `run` flushes every
`interval` seconds (or sooner when a batch is full) through a worker thread, so SQLite never
blocks the queue reader. Listeners (the live monitor over D-Bus) get each decision at once.
A failed write is logged and the batch kept for the next try, up to a bound: losing log rows
under a broken disk is better than growing without end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from snitchd.errors import StoreError
from snitchd.store import Decision, FlowBytes, Store

__all__ = ["Alert", "EventLog"]

log = logging.getLogger(__name__)

MAX_PENDING = 100_000


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
    def __init__(self, store: Store, interval: float = 0.5, batch: int = 2000) -> None:
        self._store = store
        self._interval = interval
        self._batch = batch
        self._pending: list[Decision] = []
        self._hits: dict[int, tuple[int, float]] = {}
        self._apps: dict[str, tuple[float, str | None]] = {}
        self._ends: list[FlowBytes] = []
        self._wake = asyncio.Event()
        self.listeners: list[Callable[[Decision], None]] = []
        self.written = 0
        self.dropped = 0

    def record(self, decision: Decision) -> None:
        self._pending.append(decision)
        if decision.rule_id is not None:
            count, _ = self._hits.get(decision.rule_id, (0, 0.0))
            self._hits[decision.rule_id] = (count + 1, decision.time)
        for listener in self.listeners:
            listener(decision)
        if len(self._pending) >= self._batch:
            self._wake.set()

    def note_app(self, exe: str, first_seen: float, sha256: str | None) -> None:
        self._apps[exe] = (first_seen, sha256)

    def flow_ended(self, end: FlowBytes) -> None:
        """Counters of a finished flow, joined to its log row with the next batch (after the
        row itself is written)."""
        self._ends.append(end)

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        hits, self._hits = self._hits, {}
        apps, self._apps = self._apps, {}
        ends, self._ends = self._ends, []
        if not batch and not hits and not apps and not ends:
            return
        try:
            await asyncio.to_thread(self._write, batch, hits, apps, ends)
        except StoreError as exc:
            log.error("connection log write failed rows=%d: %s", len(batch), exc)
            self._pending[:0] = batch
            self._apps.update(apps)
            self._ends[:0] = ends
            overflow = len(self._pending) - MAX_PENDING
            if overflow > 0:
                del self._pending[:overflow]
                self.dropped += overflow
            return
        self.written += len(batch)

    def _write(
        self,
        batch: list[Decision],
        hits: dict[int, tuple[int, float]],
        apps: dict[str, tuple[float, str | None]],
        ends: list[FlowBytes],
    ) -> None:
        if batch:
            self._store.log_decisions(batch)
        if ends:
            self._store.record_flow_ends(ends)
        if hits:
            self._store.record_hits(hits)
        if apps:
            self._store.note_apps(apps)

    async def run(self) -> None:
        """Flush until cancelled; the final flush happens in `flush` called at shutdown."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            await self.flush()
