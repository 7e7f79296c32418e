"""snitchd's handle on its log writer, a child process (`child`) that owns every write to
the connection log.

snitchd sends it batches of decided flows (`Batch`); the writer stores them, joins conntrack's
byte counters to each flow's row and prunes the log, and answers each batch with a `Done`, so
`snitchctl log` can wait for what was decided before it asked.

Why a process and not a thread of snitchd: SQLite's parameter binding and the conntrack decoder
are Python, and a thread doing them holds the GIL the packet loop needs. Measured with
bench/connbench.py (2 cores, allow rule, connect+close, same run): with the writer thread and
the conntrack reader inside snitchd, 7.3k new connections/s, p99 410 µs; without the conntrack
reader, 8.7k/s, p99 228 µs; without both, 4 clients reached 18.5k/s against 12.0k/s.

The two talk over a socket pair with `multiprocessing.connection` (framing and pickling). The
child dies with snitchd: it stops when the pair reads end-of-file, and ignores SIGINT, so a
Ctrl-C to snitchd in a terminal lets snitchd send the last batch before both stop.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import NoReturn

from snitch_common.errors import StoreError
from snitchd.logwriter.protocol import Batch, Done

__all__ = ["Recorder", "RecorderGone"]

log = logging.getLogger(__name__)

_CHILD = "import sys; from snitchd.logwriter.child import main; sys.exit(main())"
READY_TIMEOUT = 30.0  # the child imports sqlite-utils and opens the store: ~0.3 s, measured
RETRY_DELAY = 5.0  # after a writer that could not start (a corrupt database), not twice a second
POLL_SLICE = 0.25  # an answer is awaited in slices, so a stop's deadline set meanwhile is seen


class RecorderGone(StoreError):
    """The child is not there or did not answer: snitchd keeps the rows and starts a new one."""


class Recorder:
    """snitchd's side: starts the child, hands it a batch and waits for its answer. Blocking,
    so the event log calls it from a worker thread; one batch at a time. A hand-over whose
    awaiting task was cancelled (snitchd stopping) goes on in its thread, and the last
    hand-over's thread must not wait on the same connection meanwhile: one would take the
    other's answer, and the other wait out its timeout."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.pid: int | None = None
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None  # a spawned writer; None if forked
        self._status: int | None = None  # a forked writer's exit status, once reaped
        self._conn: Connection | None = None
        self._retry_at = 0.0
        self._one_at_a_time = threading.Lock()
        self._stop_at = float("inf")

    def stop_by(self, deadline: float) -> None:
        """snitchd is stopping: no answer is awaited past `deadline` (`time.monotonic()`), by
        the last hand-over or by one still running in the thread of a cancelled task, and no
        writer is started after it. A writer that has not answered by then is ended (its
        database locked for good, say): its batch is lost, and snitchd may exit."""
        self._stop_at = deadline

    @property
    def stopping(self) -> bool:
        return self._stop_at != float("inf")

    def start(self) -> None:
        """Start the child and wait until it reads conntrack events, so that every flow let out
        after this returns gets its byte counters.

        The first writer is forked while snitchd has no other thread yet (before its loop):
        it shares the interpreter and the modules both hold, measured PSS of the pair 50 MB
        against 60 MB spawned. A writer started later, beside running threads, is spawned."""
        ours, theirs = socket.socketpair()
        try:
            if self.starts == 0 and threading.active_count() == 1:
                self.pid = self._fork(ours, theirs)
            else:
                self._proc = subprocess.Popen(
                    [sys.executable, "-c", _CHILD, str(theirs.fileno()), self.database],
                    pass_fds=(theirs.fileno(),),
                    stdin=subprocess.DEVNULL,
                )
                self.pid = self._proc.pid
        except OSError as exc:  # out of processes or fds, the interpreter gone in an upgrade
            ours.close()
            raise RecorderGone(f"cannot start the connection log writer: {exc}") from exc
        finally:
            theirs.close()
        self._conn = Connection(ours.detach())
        self.starts += 1
        ready = self._answer(0, READY_TIMEOUT)
        if ready.error is not None:
            self.close()
            raise StoreError(ready.error)
        log.info("connection log writer started pid=%d", self.pid)

    def write(self, batch: Batch, timeout: float) -> Done:
        """Send `batch` and wait for its answer. A child that died or hangs is ended and
        RecorderGone raised; the next call starts a new one."""
        with self._one_at_a_time:
            return self._write(batch, timeout)

    def _write(self, batch: Batch, timeout: float) -> Done:
        if time.monotonic() >= self._stop_at:
            raise RecorderGone("connection log writer not asked: snitchd stopped waiting for it")
        if self._conn is None:
            if time.monotonic() < self._retry_at:
                raise RecorderGone("connection log writer could not start; trying again soon")
            try:
                self.start()
            except StoreError:
                self._retry_at = time.monotonic() + RETRY_DELAY
                raise
        assert self._conn is not None
        try:
            self._conn.send(batch)
        except OSError as exc:
            self._lost(f"cannot reach it: {exc}")
        return self._answer(batch.seq, timeout)

    def _answer(self, seq: int, timeout: float) -> Done:
        assert self._conn is not None
        give_up = time.monotonic() + timeout
        try:
            while not self._conn.poll(POLL_SLICE):
                now = time.monotonic()
                if now >= self._stop_at:
                    self._lost("no answer before snitchd stopped waiting for it")
                if now >= give_up:
                    self._lost(f"no answer in {timeout:.0f} s")
            done: object = self._conn.recv()
        except (EOFError, OSError) as exc:
            self._lost(f"it exited ({exc or 'end of file'})")
        if not isinstance(done, Done) or done.seq != seq:
            self._lost(f"unexpected answer {done!r} to batch {seq}")
        return done

    def _fork(self, ours: socket.socket, theirs: socket.socket) -> int:
        gc.freeze()  # the child's collections then leave the shared objects' pages alone
        pid = os.fork()
        if pid:
            return pid
        code = 1
        try:
            ours.close()
            # Imported here, in the child only: snitchd itself never needs the conntrack reader.
            from snitchd.logwriter.child import main  # noqa: PLC0415

            code = main([str(theirs.fileno()), self.database])
        except BaseException:
            log.exception("connection log writer failed")
        finally:
            os._exit(code)  # never return into snitchd's code (its finally blocks, atexit)

    def _lost(self, why: str) -> NoReturn:
        status = self._wait(0.0)
        self.close(timeout=1.0)
        raise RecorderGone(f"connection log writer lost: {why} (exit status {status})")

    def _wait(self, timeout: float) -> int | None:
        """The child's exit status once it exited within `timeout`, else None."""
        if self._proc is not None:
            try:
                return self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        if self.pid is None or self._status is not None:
            return self._status
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._status = os.waitstatus_to_exitcode(status)
                return self._status
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)

    def close(self, timeout: float = 10.0) -> None:
        """Let the child finish (it sees end-of-file), then end it if it will not."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self.pid is not None and self._wait(timeout) is None:
            os.kill(self.pid, signal.SIGKILL)  # not reaped yet: the pid is still our child's
            self._wait(5.0)
        self._proc = None
        self._status = self.pid = None
