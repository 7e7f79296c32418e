"""The sha256 of what a process runs, for rules that pin one (`app=… sha256=…`).

A user chooses how big their executable is: a 1 GiB sparse file took the loop 4.6 s to hash, 4 GiB
more than 16 s (issue 12); in a worker thread it still held the loop's GIL and a core, slice
after slice. So the hashing is done by a child process at the machine's idle priority
(`procs/hasher.py`), which takes users in turn; snitchd opens the file and passes the child the
open descriptor. Where the child cannot be started at all, a worker job hashes in slices of
`_STEP` bytes as before. Each file is hashed once: the digest is cached by the file's
identity (dev, inode, size, mtime_ns, ctime_ns, inode generation) — ctime too, because a pinned
executable edited in place with its mtime put back must not keep its old digest, and nobody can
set ctime back; and the inode's generation where the file system keeps one (FS_IOC_GETVERSION:
ext4, xfs, btrfs; 0 elsewhere), so an inode number freed and reused is another file.
The cache is bounded in entries; a hash in progress is joined by every process of the same file.

How long a packet waits for a digest is the caller's (`Attributor`): up to the lookup's deadline
for a file of at most `max_hash_bytes`, `hash_wait` for a larger one; then its flow is decided
with the digest unknown, which no pinned rule matches (fail closed). The hash goes on regardless,
so the next flow of that file is decided by its digest.
"""

from __future__ import annotations

import array
import fcntl
import hashlib
import itertools
import logging
import os
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from io import FileIO
from typing import Any

from snitchd.procs.hasher import Hasher, HasherUnavailable
from snitchd.procs.worker import Job
from snitchd.regularfile import open_regular

__all__ = ["FileKey", "Hashes", "Hashing"]

log = logging.getLogger(__name__)

FileKey = tuple[int, int, int, int, int, int]  # dev, inode, size, mtime_ns, ctime_ns, generation
_FS_IOC_GETVERSION = 0x80087601  # _IOR('v', 1, long), on 64-bit Linux

_CHUNK = 1 << 20
_STEP = 8 << 20  # bytes hashed per slice: ~10 ms at ~0.8 GB/s (sha256 here)
_HASHES_MAX = 1024
_QUEUED_MAX = 8  # hashes waiting in one user's line; beyond, a file is left unhashed for now


@dataclass(frozen=True, slots=True)
class Hashing:
    """A hash in progress: its result is the hex digest, or None when the file could not be
    read to the end."""

    key: FileKey
    size: int
    future: Future[str | None]


Submit = Callable[[Hashable, Job, Callable[[Any, BaseException | None], None]], None]


class Hashes:
    """Digests by file identity, and the hashes under way (thread-safe)."""

    def __init__(self, max_entries: int = _HASHES_MAX) -> None:
        self._max = max_entries
        self._lock = threading.Lock()
        self._done: dict[FileKey, str] = {}
        self._running: dict[FileKey, Hashing] = {}
        self._queued: dict[int, int] = {}  # uid -> hashes queued or running for it
        self._hasher = Hasher()
        self._threads_only = False  # the child cannot be started: hash in the worker
        # Told each new digest, in the thread that finished it: a queue reader passes it on to
        # the others through snitchd, so a file is hashed by one reader, not by each (issue 21).
        self.on_hashed: Callable[[FileKey, str], None] | None = None

    @property
    def hasher_pid(self) -> int | None:
        """The hasher child's pid, None before the first hash."""
        return self._hasher.pid

    def close(self) -> None:
        self._hasher.close()

    def clear(self) -> None:
        with self._lock:
            self._done.clear()

    def learn(self, key: FileKey, digest: str) -> None:
        """A digest another queue reader computed (the key is the kernel's, the same in every
        process): its file is not hashed here again."""
        with self._lock:
            self._keep(key, digest)

    def _keep(self, key: FileKey, digest: str) -> None:
        self._done[key] = digest
        for old in list(itertools.islice(self._done, max(0, len(self._done) - self._max))):
            del self._done[old]

    def start(
        self,
        pid: int,
        uid: int,
        submit: Submit,
        expect: tuple[int, int] | None = None,
        path: str | None = None,
    ) -> str | Hashing | None:
        """The digest of /proc/<pid>/exe (it survives the binary's deletion or replacement) if
        known, else the hash under way for it, started if need be; None when it cannot be read
        (or too many of this user's hashes wait already). `path` hashes that file instead (a
        process the BPF recorder saw, gone since); `expect` (device, inode) refuses any other
        file (the process exec'd, or the path was replaced, since it was named)."""
        try:
            # A regular file only: the recorded path may have been swapped for a terminal.
            f = os.fdopen(open_regular(path or f"/proc/{pid}/exe"), "rb", buffering=0)
        except OSError as exc:
            log.debug("cannot hash executable pid=%d: %s", pid, exc)
            return None
        try:
            st = os.fstat(f.fileno())
            if expect is not None and (st.st_dev, st.st_ino) != expect:
                f.close()
                return None
            key = (
                st.st_dev,
                st.st_ino,
                st.st_size,
                st.st_mtime_ns,
                st.st_ctime_ns,
                _generation(f.fileno()),
            )
            with self._lock:
                known = self._done.get(key) or self._running.get(key)
                if known is None and self._queued.get(uid, 0) >= _QUEUED_MAX:
                    log.info("too many hashes queued uid=%d: pid=%d left unhashed", uid, pid)
                if known is None and self._queued.get(uid, 0) < _QUEUED_MAX:
                    hashing = self._running[key] = Hashing(key, st.st_size, Future())
                    self._queued[uid] = self._queued.get(uid, 0) + 1
                else:
                    f.close()
                    return known
        except BaseException:
            f.close()
            raise
        if not self._threads_only:
            try:
                self._hasher.submit(
                    uid, f.fileno(), st.st_size, lambda r: self._finish(hashing, uid, r, None)
                )
            except HasherUnavailable as exc:
                if self._hasher.pid is not None:  # it ran: it is being started again
                    f.close()
                    log.info("executable pid=%d left unhashed for now: %s", pid, exc)
                    self._finish(hashing, uid, None, None)
                    return None
                self._threads_only = True
            else:
                f.close()  # the child holds its own copy of the descriptor
                return hashing
        submit(("hash", uid), self._hash(f, hashing), lambda r, e: self._finish(hashing, uid, r, e))
        return hashing

    def digest_now(self, pid: int) -> str | None:
        """The digest, waited for in this thread (for `Attributor.lookup`, never the loop)."""

        def run_inline(_line: Hashable, job: Job, done: Callable[..., None]) -> None:
            try:
                while True:
                    next(job)
            except StopIteration as stop:
                done(stop.value, None)
            except Exception as exc:
                done(None, exc)

        got = self.start(pid, -1, run_inline)
        if isinstance(got, Hashing):
            return got.future.result()
        return got

    def _hash(self, f: FileIO, hashing: Hashing) -> Job:
        with f:
            digest = hashlib.sha256()
            buf = bytearray(_CHUNK)
            view = memoryview(buf)
            done = since = 0
            while n := f.readinto(view):
                digest.update(view[:n])  # releases the GIL for more than 2 KiB
                done += n
                since += n
                if since >= _STEP:
                    since = 0
                    yield
            if done != hashing.size:
                log.debug("executable changed size while hashed: %d of %d", done, hashing.size)
                return None
            return digest.hexdigest()

    def _finish(self, hashing: Hashing, uid: int, digest: Any, error: BaseException | None) -> None:
        if error is not None:
            log.debug("hashing failed: %s", error)
            digest = None
        with self._lock:
            self._running.pop(hashing.key, None)
            left = self._queued.get(uid, 1) - 1
            if left > 0:
                self._queued[uid] = left
            else:
                self._queued.pop(uid, None)
            if digest is not None:
                self._keep(hashing.key, digest)
        hashing.future.set_result(digest)
        if digest is not None and self.on_hashed is not None:
            self.on_hashed(hashing.key, digest)


def _generation(fd: int) -> int:
    """The inode's generation number, or 0 where the file system has none (tmpfs, overlayfs)."""
    buf = array.array("l", [0])
    try:
        fcntl.ioctl(fd, _FS_IOC_GETVERSION, buf)
    except OSError:
        return 0
    return buf[0]
