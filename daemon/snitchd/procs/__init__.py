"""Who sent a flow: the step between packet decoding and the rules (`packet` → `procs` → `decide`).

The kernel holds a new flow's first packet while we look, so the packet loop does only what is
bounded whatever a user does: one sock_diag exact request (uid and socket inode, ~4 µs), a
cached owner checked by one readlink, a cached process checked by one read of /proc/<pid>/stat.
Everything else — a /proc/*/fd scan for an unseen socket, psutil details of an unseen process,
the sha256 of its executable — is a worker job (`worker`), and `begin` returns a `Lookup` whose
future the packet waits on; later packets of the flow join it. Jobs run in one line per user,
so a user with 300k fds slows their own lookups only. A lookup that takes longer than its
deadline is answered uid-only (`Lookup.late`; the firewall then decides as strictly as the owner
could have been), and a digest that is not ready in time is left unknown (`Lookup.hash_late`).

It must never guess: a socket we cannot tie to a process yields `uid-only`, no socket at all
yields `kernel`, never somebody else's name. It must never call `psutil.net_connections()` (5 ms
per call: it reads every socket of the system).

Whole lookup, warm cache: ~14 µs median, 22 µs p99 (bench/bench_procs.py, 10k sockets in 500
processes, Python 3.11); a miss costs the loop the same plus a hand-off to the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from snitch_common.records import Flow, Process
from snitch_common.rules import DEFAULT_INTERPRETERS
from snitchd.procs.details import Details, Stat, process_alive, read_stat
from snitchd.procs.hashes import Hashes, Hashing
from snitchd.procs.owners import NEED_SCAN, Owners
from snitchd.procs.sockdiag import SockDiag
from snitchd.procs.worker import Job, Worker

__all__ = ["Attributor", "Limits", "Lookup", "process_alive"]

log = logging.getLogger(__name__)

_PROCS_MAX = 4096
_PENDING_PER_UID = 256  # lookups one user may have waiting; beyond, answered late at once

_ProcKey = tuple[int, int, bytes, int]  # pid, start ticks, comm, uid


@dataclass(frozen=True, slots=True)
class Limits:
    """How long a held packet waits: `timeout` for the whole lookup, and for the sha256 of an
    executable larger than `max_hash_bytes`, `hash_wait` (both in seconds)."""

    timeout: float = 2.0
    max_hash_bytes: int = 256 << 20
    hash_wait: float = 1.0


@dataclass(slots=True, eq=False)
class Lookup:
    """A lookup handed to the worker. The packets of its flow wait for `future` (on the loop).

    `late`: the owner was not found in time and the answer is uid-only; `hash_late`: the process
    is known but its executable's digest was not ready in time (sha256 None).
    """

    uid: int
    inode: int
    future: asyncio.Future[Process]
    started: float
    late: bool = False
    hash_late: bool = False
    given_up: bool = False  # read by the worker: stop scanning
    partial: Process | None = None
    key: _ProcKey | None = None
    timers: list[asyncio.TimerHandle] = field(default_factory=list)


class Attributor:
    """Answers `begin(flow)` on the loop, and `lookup(flow)` whole, from caches it bounds."""

    def __init__(
        self,
        *,
        hash_exe: bool = True,
        threads: int = 2,
        interpreters: tuple[str, ...] = DEFAULT_INTERPRETERS,
    ) -> None:
        self._hash_exe = hash_exe
        self._diag = SockDiag()
        self._owners = Owners()
        self._details = Details(interpreters)
        self._hashes = Hashes()
        self._worker = Worker(threads)
        self._lock = threading.Lock()
        self._procs: dict[_ProcKey, Process] = {}
        self._pending: dict[tuple[int, int], Lookup] = {}
        self._per_uid: dict[int, int] = {}

    def close(self) -> None:
        self._worker.close()
        self._diag.close()

    def forget(self) -> None:
        """Drop every cache (the benchmark's cold runs)."""
        self._owners.clear()
        self._hashes.clear()
        with self._lock:
            self._procs.clear()

    # -- on the loop ----------------------------------------------------------------------------
    def begin(self, flow: Flow, limits: Limits) -> Process | Lookup:
        """Who sent `flow`, if the loop can tell at once; else the `Lookup` to wait for. Raises
        OSError only when sock_diag itself fails (the packet loop then applies the fail mode):
        a missing socket is an answer, not an error."""
        found = self._diag.find(flow)
        if found is None:
            return Process.kernel()
        uid, inode = found
        if inode == 0:  # closed by its process, or an fd-less kernel socket
            return Process.uid_only(uid)
        pending = self._pending.get((uid, inode))
        if pending is not None:
            return pending
        pid = self._owners.find_now(inode, uid)
        if pid is None:
            return Process.uid_only(uid)
        stat = None
        if pid != NEED_SCAN:
            stat = read_stat(pid)
            if stat is None:
                return Process.uid_only(uid)
            with self._lock:
                proc = self._procs.get((pid, stat[2], stat[3], uid))
            if proc is not None:
                return proc
        return self._hand_off(uid, inode, None if pid == NEED_SCAN else pid, stat, limits)

    def _hand_off(
        self, uid: int, inode: int, pid: int | None, stat: Stat | None, limits: Limits
    ) -> Lookup:
        loop = asyncio.get_running_loop()
        lookup = Lookup(uid, inode, loop.create_future(), time.monotonic())
        if self._per_uid.get(uid, 0) >= _PENDING_PER_UID:
            log.warning("too many lookups pending uid=%d: answered uid-only", uid)
            lookup.late = True
            lookup.future.set_result(Process.uid_only(uid))
            return lookup
        self._pending[(uid, inode)] = lookup
        self._per_uid[uid] = self._per_uid.get(uid, 0) + 1
        lookup.timers.append(loop.call_later(limits.timeout, self._give_up, lookup))

        def done(result: Any, error: BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: snitchd is stopping
                loop.call_soon_threadsafe(self._resolved, lookup, limits, result, error)

        self._worker.submit(uid, self._resolve(lookup, pid, stat), done)
        return lookup

    def _resolved(
        self, lookup: Lookup, limits: Limits, result: Any, error: BaseException | None
    ) -> None:
        if error is not None:
            log.error("attribution failed uid=%d inode=%d: %r", lookup.uid, lookup.inode, error)
        if lookup.future.done():
            return
        if result is None:
            self._finish(lookup, Process.uid_only(lookup.uid))
            return
        proc, hashing = result
        if hashing is None:
            self._finish(lookup, proc)
            return
        lookup.partial = proc
        loop = asyncio.get_running_loop()
        if hashing.size > limits.max_hash_bytes:
            wait = max(0.0, lookup.started + limits.hash_wait - time.monotonic())
            lookup.timers.append(loop.call_later(wait, self._give_up, lookup))

        def hashed(_: object) -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._hashed, lookup, hashing)

        hashing.future.add_done_callback(hashed)

    def _hashed(self, lookup: Lookup, hashing: Hashing) -> None:
        assert lookup.partial is not None and lookup.key is not None
        proc = dataclasses.replace(lookup.partial, sha256=hashing.future.result())
        self._remember(lookup.key, proc)
        if not lookup.future.done():
            self._finish(lookup, proc)

    def _give_up(self, lookup: Lookup) -> None:
        if lookup.future.done():
            return
        lookup.given_up = True
        if lookup.partial is not None:
            lookup.hash_late = True
            self._finish(lookup, lookup.partial)
        else:
            lookup.late = True
            self._finish(lookup, Process.uid_only(lookup.uid))
        log.info(
            "lookup gave up uid=%d inode=%d after %.2f s: %s",
            lookup.uid,
            lookup.inode,
            time.monotonic() - lookup.started,
            "digest unknown" if lookup.hash_late else "uid-only",
        )

    def _finish(self, lookup: Lookup, proc: Process) -> None:
        for timer in lookup.timers:
            timer.cancel()
        if self._pending.get((lookup.uid, lookup.inode)) is lookup:
            del self._pending[(lookup.uid, lookup.inode)]
            left = self._per_uid.get(lookup.uid, 1) - 1
            if left > 0:
                self._per_uid[lookup.uid] = left
            else:
                self._per_uid.pop(lookup.uid, None)
        lookup.future.set_result(proc)

    # -- in the worker --------------------------------------------------------------------------
    def _resolve(self, lookup: Lookup, pid: int | None, stat: Stat | None) -> Job:
        """Owner, then details, then the digest (or the hash under way, for the loop to wait on).
        Returns None (uid-only) or (Process, Hashing | None)."""
        if lookup.given_up:
            return None
        if pid is None:
            pid = yield from self._owners.scan(lookup.inode, lookup.uid, lambda: lookup.given_up)
            if pid is None or lookup.given_up:
                return None
            stat = read_stat(pid)
        if stat is None:
            return None
        lookup.key = key = (pid, stat[2], stat[3], lookup.uid)
        with self._lock:
            known = self._procs.get(key)
        if known is not None:
            return known, None
        proc = self._details.describe(pid, lookup.uid, stat)
        if proc is None:
            return None
        if not self._hash_exe:
            self._remember(key, proc)
            return proc, None
        got = self._hashes.start(pid, lookup.uid, self._submit)
        if isinstance(got, Hashing):
            return proc, got
        proc = dataclasses.replace(proc, sha256=got)
        if got is not None:  # unreadable, or this user's hashes queue is full: ask again later
            self._remember(key, proc)
        return proc, None

    def _submit(self, line: Hashable, job: Job, done: Any) -> None:
        self._worker.submit(line, job, done)

    def _remember(self, key: _ProcKey, proc: Process) -> None:
        with self._lock:
            self._procs[key] = proc
            while len(self._procs) > _PROCS_MAX:
                del self._procs[next(iter(self._procs))]

    # -- whole, in the caller's thread ----------------------------------------------------------
    def lookup(self, flow: Flow) -> Process:
        """Who sent `flow`, the whole lookup in this thread: for tools, tests and benchmarks,
        never for the packet loop (it may scan /proc and hash for as long as that takes)."""
        found = self._diag.find(flow)
        if found is None:
            return Process.kernel()
        uid, inode = found
        if inode == 0:
            return Process.uid_only(uid)
        pid = self._owners.find_now(inode, uid)
        if pid == NEED_SCAN:
            pid = _run(self._owners.scan(inode, uid, lambda: False))
        if pid is None:
            return Process.uid_only(uid)
        stat = read_stat(pid)
        if stat is None:
            return Process.uid_only(uid)
        key = (pid, stat[2], stat[3], uid)
        with self._lock:
            proc = self._procs.get(key)
        if proc is not None:
            return proc
        proc = self._details.describe(pid, uid, stat)
        if proc is None:
            return Process.uid_only(uid)
        if self._hash_exe:
            proc = dataclasses.replace(proc, sha256=self._hashes.digest_now(pid))
        self._remember(key, proc)
        return proc


def _run(job: Job) -> Any:
    try:
        while True:
            next(job)
    except StopIteration as stop:
        return stop.value
