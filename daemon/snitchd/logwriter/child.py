"""The log writer: the child process behind `parent`, which owns every write to the log.

It writes snitchd's batches to SQLite, reads conntrack's DESTROY events (`conntrack.FlowEnds`)
and joins each flow's byte counters to its row, and prunes the log. A module of its own so that
snitchd never imports what only the child needs (the conntrack reader).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from multiprocessing.connection import Connection

from snitch_common.errors import SnitchError, StoreError
from snitchd.logwriter.conntrack import FlowEnd, FlowEnds, enable_accounting
from snitchd.logwriter.protocol import Batch, Done
from snitchd.store import FlowBytes, Store

__all__ = ["LogWriter", "main"]

log = logging.getLogger(__name__)

MAX_ENDS = 100_000  # flow ends kept while the database refuses writes; the oldest go first


class LogWriter:
    """The child's side: one store, and the flow ends waiting for their rows."""

    def __init__(self, conn: Connection, store: Store) -> None:
        self.conn = conn
        self.store = store
        # A flow's end is joined one batch after the batch that was on its way when the end
        # came: its row (decided before it ended) is in that batch or the one after.
        self._ends_new: list[FlowBytes] = []
        self._ends_due: list[FlowBytes] = []
        self.stopped = asyncio.Event()

    def on_end(self, end: FlowEnd) -> None:
        self._ends_new.append(
            FlowBytes(
                end.proto.value,
                str(end.src),
                end.sport,
                str(end.dst),
                end.dport,
                end.bytes_out,
                end.bytes_in,
                time.time(),
            )
        )

    def on_readable(self) -> None:
        try:
            self.conn.send(self.handle(self.conn.recv()))
        except (EOFError, OSError):  # snitchd is gone
            self.stopped.set()

    def handle(self, batch: Batch) -> Done:
        due, self._ends_due, self._ends_new = self._ends_due, self._ends_new, []
        try:
            if batch.rows:
                self.store.log_rows(batch.rows)
            ends = self.store.record_flow_ends(due) if due else 0
            if batch.hits:
                self.store.record_hits(batch.hits)
            if batch.apps:
                self.store.note_apps(batch.apps)
            pruned = self.store.prune(*batch.prune) if batch.prune is not None else 0
        except StoreError as exc:
            self._ends_due[:0] = due
            del self._ends_due[:-MAX_ENDS]
            return Done(batch.seq, error=str(exc))
        return Done(batch.seq, len(batch.rows), pruned, ends)


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
        conn.send(Done(0))
        loop.add_reader(conn.fileno(), writer.on_readable)
        await writer.stopped.wait()
    finally:
        with contextlib.suppress(Exception):
            loop.remove_reader(conn.fileno())
        ends.close()
        store.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    conn = Connection(int(args[0]))
    try:
        asyncio.run(_serve(conn, args[1]))
    finally:
        conn.close()
    return 0
