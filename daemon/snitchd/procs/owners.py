"""Which process holds a socket inode: a cache checked on the loop, a /proc scan in the worker.

The kernel has no inode → pid map: the only way is reading /proc/<pid>/fd/* links. That costs
~1-3 µs per fd, and a user controls how many fds their processes hold (50 processes of 6,000 fds
took ~1 s per scan, issue 12), so the loop only ever does bounded work here: one dict look-up and
one readlink for a cached owner, and a readlink of the few fds where the latest senders' last
sockets were (a program that closes a socket and opens the next gets the same fd back). All else
is `scan`, a job for the worker: the socket user's recent processes first, then that user's
processes newest first (a process that just started is the likeliest sender), then the rest,
caching every socket seen, in slices of `SLICE` seconds, until found, or the lookup gives up.

The cache is written by the worker and read by the loop: every access holds `_lock`, for a dict
operation only (never across a system call).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Generator, Iterator

__all__ = ["NEED_SCAN", "SLICE", "Owners", "holds"]

log = logging.getLogger(__name__)

NEED_SCAN = -1  # find_now: the loop could not tell, a scan is needed
SLICE = 0.002  # seconds of scanning between two turns of the worker's lines
_OWNERS_MAX = 1 << 16
_ORPHANS_MAX = 4096
_RECENT_MAX = 32
_ORPHAN_TTL = 2.0  # seconds before a socket nobody held is looked for again
_HOT_QUICK = 2  # latest senders whose last fds the loop checks
_LAST_FDS = 4


def holds(pid: int, fd: int, inode: int) -> bool:
    """Whether `pid` has socket `inode` open at `fd` right now.

    Exact, unlike a start-time check: an inode is unique while its socket lives, and sock_diag has
    just shown it alive, so a match means this pid is an owner now, whatever happened to the pid.
    """
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]"
    except OSError:
        return False


def _trim(cache: dict[int, object], limit: int) -> None:
    """Drop the oldest entries: dicts keep insertion order, which is all the eviction we need."""
    for key in list(itertools.islice(cache, max(0, len(cache) - limit))):
        del cache[key]


class Owners:
    """inode → (pid, fd), with the recent senders per uid; shared by the loop and the worker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owners: dict[int, tuple[int, int]] = {}
        self._orphans: dict[int, float] = {}  # inode -> monotonic time no process held it
        self._recent: dict[int, int] = {}  # pid -> uid of the pids that last owned a socket
        self._last_fds: dict[int, list[int]] = {}  # pid -> fds of its latest new sockets

    def clear(self) -> None:
        with self._lock:
            self._owners.clear()
            self._orphans.clear()
            self._recent.clear()
            self._last_fds.clear()

    def find_now(
        self, inode: int, uid: int, check: Callable[[int, int, int], bool] = holds
    ) -> int | None:
        """The loop's bounded try: the owner's pid, None when nobody held it a moment ago (an
        fd in flight, or a kernel socket: not rescanned per packet), or NEED_SCAN. `check` is
        `holds`, or the packet loop's `details.ProcFds.holds` (the same answer, cheaper)."""
        now = time.monotonic()
        last: list[tuple[int, tuple[int, ...]]] = []
        with self._lock:
            hit = self._owners.get(inode)
            if hit is None:
                missed = self._orphans.get(inode)
                if missed is not None and now - missed < _ORPHAN_TTL:
                    return None
                last = self._latest(uid)
        if hit is not None:
            if check(hit[0], hit[1], inode):
                self._found(inode, hit[0], hit[1], uid)
                return hit[0]
            with self._lock:
                self._owners.pop(inode, None)
                missed = self._orphans.get(inode)
                if missed is not None and now - missed < _ORPHAN_TTL:
                    return None
                last = self._latest(uid)
        for pid, fds in last:
            for fd in fds:
                if check(pid, fd, inode):
                    self._found(inode, pid, fd, uid)
                    return pid
        return NEED_SCAN

    def _latest(self, uid: int) -> list[tuple[int, tuple[int, ...]]]:
        """The latest senders of `uid` that the loop tries, with their last fds (under _lock)."""
        last = []
        for pid, owner in reversed(self._recent.items()):
            if owner == uid:
                last.append((pid, tuple(self._last_fds.get(pid, ()))))
                if len(last) == _HOT_QUICK:
                    break
        return last

    def scan(
        self, inode: int, uid: int, stopped: Callable[[], bool]
    ) -> Generator[None, None, int | None]:
        """The worker's job: find who holds `inode`, yielding every `SLICE` seconds; returns
        None when nobody does (or `stopped()` says the lookup was given up)."""
        started = time.perf_counter()
        with self._lock:
            hot = [pid for pid, owner in reversed(self._recent.items()) if owner == uid]
        seen: dict[int, tuple[int, int]] = {}
        slice_end = time.perf_counter() + SLICE
        scanned = 0
        found: int | None = None
        for pid in itertools.chain(hot, self._others(uid, set(hot))):
            if pid < 0:  # a tick between two stat() calls of the listing
                if time.perf_counter() >= slice_end:
                    yield
                    if stopped():
                        return None
                    slice_end = time.perf_counter() + SLICE
                continue
            scanned += 1
            base = f"/proc/{pid}/fd/"
            try:
                entries = os.scandir(base)  # getdents in batches: a huge fd table is sliced too
            except OSError:
                continue
            with entries:
                for entry in entries:
                    try:
                        link = os.readlink(base + entry.name)
                    except OSError:
                        link = ""
                    if link.startswith("socket:["):
                        ino = int(link[8:-1])
                        seen[ino] = (pid, int(entry.name))
                        if ino == inode:
                            found = pid
                    if time.perf_counter() >= slice_end:
                        self._learn(seen)
                        yield
                        if stopped():
                            return None
                        slice_end = time.perf_counter() + SLICE
            if found is not None:
                break
        self._learn(seen)
        if found is None:
            with self._lock:
                self._orphans[inode] = time.monotonic()
                _trim(self._orphans, _ORPHANS_MAX)  # type: ignore[arg-type]
        else:
            with self._lock:
                fd = self._owners[inode][1] if inode in self._owners else -1
            self._found(inode, found, fd, uid)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "owner scan inode=%d uid=%d pid=%s processes=%d ms=%.2f",
                inode,
                uid,
                found,
                scanned,
                (time.perf_counter() - started) * 1e3,
            )
        return found

    @staticmethod
    def _others(uid: int, skip: set[int]) -> Iterator[int]:
        """That uid's processes newest first, then everybody else's, with a -1 after each stat()
        so the caller can keep to its slice. /proc/<pid> belongs to the euid (root when not
        dumpable): a hint for the order, never a verdict."""
        pids = sorted((int(n) for n in os.listdir("/proc") if n.isdigit()), reverse=True)
        rest: list[int] = []
        for pid in pids:
            if pid in skip:
                continue
            try:
                mine = os.stat(f"/proc/{pid}").st_uid == uid
            except OSError:
                continue
            if mine:
                yield pid
            else:
                rest.append(pid)
            yield -1
        yield from rest

    def _learn(self, seen: dict[int, tuple[int, int]]) -> None:
        if seen:
            with self._lock:
                self._owners.update(seen)
                _trim(self._owners, _OWNERS_MAX)  # type: ignore[arg-type]
            seen.clear()

    def learn(self, inode: int, pid: int, fd: int, uid: int) -> None:
        """`pid` holds socket `inode` at `fd`, as found elsewhere (a container's namespace,
        issue 16): `find_now` then finds it, and that process's next sockets, from memory."""
        self._found(inode, pid, fd, uid)

    def _found(self, inode: int, pid: int, fd: int, uid: int) -> None:
        """Mark `pid` as the latest sender: its next new socket is looked for there first."""
        with self._lock:
            if fd >= 0:
                owners = self._owners
                owners[inode] = (pid, fd)
                if len(owners) > _OWNERS_MAX:
                    _trim(owners, _OWNERS_MAX)  # type: ignore[arg-type]
                if self._orphans:
                    self._orphans.pop(inode, None)
                fds = self._last_fds.get(pid)
                if fds is None:
                    fds = self._last_fds[pid] = []
                if fd not in fds:
                    fds.insert(0, fd)
                    del fds[_LAST_FDS:]
            recent = self._recent
            if next(reversed(recent), None) != pid:
                recent.pop(pid, None)
                recent[pid] = uid
                _trim(recent, _RECENT_MAX)  # type: ignore[arg-type]
                _trim(self._last_fds, _RECENT_MAX)  # type: ignore[arg-type]
