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

from snitchd.errors import StoreError
from snitchd.store import Decision, Store

__all__ = ["EventLog"]

log = logging.getLogger(__name__)

MAX_PENDING = 100_000


class EventLog:
    def __init__(self, store: Store, interval: float = 0.5, batch: int = 2000) -> None:
        self._store = store
        self._interval = interval
        self._batch = batch
        self._pending: list[Decision] = []
        self._hits: dict[int, tuple[int, float]] = {}
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

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        hits, self._hits = self._hits, {}
        if not batch and not hits:
            return
        try:
            await asyncio.to_thread(self._write, batch, hits)
        except StoreError as exc:
            log.error("connection log write failed rows=%d: %s", len(batch), exc)
            self._pending[:0] = batch
            overflow = len(self._pending) - MAX_PENDING
            if overflow > 0:
                del self._pending[:overflow]
                self.dropped += overflow
            return
        self.written += len(batch)

    def _write(self, batch: list[Decision], hits: dict[int, tuple[int, float]]) -> None:
        if batch:
            self._store.log_decisions(batch)
        if hits:
            self._store.record_hits(hits)

    async def run(self) -> None:
        """Flush until cancelled; the final flush happens in `flush` called at shutdown."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            await self.flush()
