"""The hasher child: sha256 of executables, in a process of its own at the machine's idle priority.

A user chooses how big their executable is. Hashed in a thread of snitchd, a 1 GiB sparse file
held the GIL the packet loop needs, slice after slice, and took one of the machine's cores from
it: everyone's connect() waited up to ~40 ms while it ran (issue 12, bench.disturb window 6).
So the reading and hashing run in a child process (this file, run by the interpreter: standard
library only, and `snitchd.children`), niced to 19, in the idle I/O class, and for files above
`_IDLE_ABOVE` in the SCHED_IDLE policy: a user's giant file costs the machine's idle time,
not the loop's.

snitchd opens the file (/proc/<pid>/exe, or the path the BPF recorder saw, checked by fstat) and
passes the open descriptor over a SOCK_SEQPACKET socket pair (SCM_RIGHTS): the child never
resolves a path, so a rename or replace between naming and hashing cannot change what is hashed.
The child takes each user's files in turn, `_STEP` bytes a slice, so one user's big file delays
their own hashes, not another user's. Each answer is (request id, digest or nothing).

The child dies with snitchd (PR_SET_PDEATHSIG, and a quiet exit at end of file on its socket);
when it dies first, the hashes it held end unknown (their flows are decided with the digest
unknown, which no pinned rule matches: fail closed), and snitchd starts it again after
`_RESTART_DELAY` seconds; meanwhile files are left unhashed, as when a user's line is full.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import logging
import os
import platform
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from snitchd.children import end_child

__all__ = ["Hasher", "HasherUnavailable", "main"]

log = logging.getLogger(__name__)

_REQUEST = struct.Struct("=QIQ")  # snitchd -> child: request id, uid, size; one fd attached
_ANSWER = struct.Struct("=QB32s")  # child -> snitchd: request id, 1 if hashed, the digest
_CHUNK = 1 << 20
_ZEROS = bytes(_CHUNK)
_STEP = 8 << 20  # bytes hashed per slice before the next user's turn
_IDLE_ABOVE = 64 << 20  # larger files are hashed in SCHED_IDLE (no executable is that big)
_RESTART_DELAY = 1.0
_PR_SET_PDEATHSIG = 1
_IOPRIO_CLASS_IDLE = 3
_IOPRIO_WHO_PROCESS = 1
_SYS_IOPRIO_SET = {"x86_64": 251, "aarch64": 30, "i686": 289, "armv7l": 314}

Done = Callable[[str | None], None]


class HasherUnavailable(Exception):
    """The child is not running (starting again, or cannot start): the file is left unhashed."""


class Hasher:
    """snitchd's side: starts the child on first use, sends it open files, hands the digests to
    each request's `done` (called in the hasher's reader thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._waiting: dict[int, Done] = {}
        self._next_id = 1
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stop = threading.Event()

    @property
    def pid(self) -> int | None:
        """The child's pid, None before the first hash (tests end it to see it come back)."""
        child = self._child
        return child.pid if child is not None else None

    def submit(self, uid: int, fd: int, size: int, done: Done) -> None:
        """Hash the open file `fd` (the caller keeps and closes it) for `uid`; `done(digest)`
        follows, None when it could not be read to the end. Raises HasherUnavailable when the
        child is not running (or its socket is full: too much at once)."""
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="snitchd-hasher", daemon=True
                )
                self._thread.start()
        # The first start waits for the child (once); afterwards, a child being restarted is
        # not waited for.
        self._started.wait(5)
        with self._lock:
            sock = self._sock
            if sock is None:
                raise HasherUnavailable("the hasher child is not running")
            rid = self._next_id
            self._next_id += 1
            self._waiting[rid] = done
            try:
                socket.send_fds(
                    sock, [_REQUEST.pack(rid, uid & 0xFFFFFFFF, size)], [fd], socket.MSG_DONTWAIT
                )
            except OSError as exc:
                del self._waiting[rid]
                raise HasherUnavailable(f"cannot reach the hasher child: {exc}") from None

    def close(self) -> None:
        self._stop.set()
        self._started.set()
        with self._lock:
            sock, self._sock = self._sock, None
            child = self._child
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if child is not None:
            end_child(child)
        if self._thread is not None:
            self._thread.join(2)

    # -- the reader thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sock = self._spawn()
            except OSError as exc:
                log.error("cannot start the hasher child: %s: executables go unhashed", exc)
                self._started.set()
                return
            self._started.set()
            self._read(sock)
            with self._lock:
                self._sock = None
                lost, self._waiting = self._waiting, {}
                child = self._child
            sock.close()
            for done in lost.values():
                done(None)
            if self._stop.is_set():
                return
            if child is not None:
                end_child(child)
            log.error(
                "hasher child exited (status %s): %d hashes lost, executables go unhashed until "
                "it is back",
                child.returncode if child is not None else None,
                len(lost),
            )
            if self._stop.wait(_RESTART_DELAY):
                return
            log.info("hasher child starting again")

    def _spawn(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            child = subprocess.Popen(
                # By path, not -m: the package would import psutil and asyncio for a child
                # that needs the standard library only. -P: no script dir on the path.
                [sys.executable, "-P", __file__, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        with self._lock:
            self._sock, self._child = ours, child
        log.info("hasher child pid=%d", child.pid)
        return ours

    def _read(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(_ANSWER.size)
            except OSError:
                return
            if len(data) != _ANSWER.size:
                return
            rid, ok, raw = _ANSWER.unpack(data)
            with self._lock:
                done = self._waiting.pop(rid, None)
            if done is not None:
                done(raw.hex() if ok else None)


# -- the child ------------------------------------------------------------------------------------
@dataclass(slots=True)
class _File:
    rid: int
    fd: int
    size: int
    done: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)


class _Child:
    """Each user's files in turn, a slice at a time; new requests read between slices."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lines: dict[int, deque[_File]] = {}  # uid -> files; insertion order is the turn
        self._buf = bytearray(_CHUNK)
        self._idle = False

    def run(self) -> int:
        while True:
            if not self._receive(block=not self._lines):
                return 0
            if self._lines:
                self._slice()

    def _receive(self, block: bool) -> bool:
        """Every request waiting; False at end of file (snitchd is gone)."""
        while block or select.select([self._sock], [], [], 0)[0]:
            block = False
            msg, fds, _flags, _addr = socket.recv_fds(self._sock, _REQUEST.size, 4)
            if not msg:
                for fd in fds:
                    os.close(fd)
                return False
            if len(msg) != _REQUEST.size or len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                continue
            rid, uid, size = _REQUEST.unpack(msg)
            self._lines.setdefault(uid, deque()).append(_File(rid, fds[0], size))
        return True

    def _slice(self) -> None:
        uid = next(iter(self._lines))
        line = self._lines.pop(uid)
        f = line[0]
        self._priority(f.size > _IDLE_ABOVE)
        view = memoryview(self._buf)
        since = 0
        finished = False
        try:
            while since < _STEP:
                hole = self._hole(f)
                if hole:
                    n = min(hole, _CHUNK, _STEP - since)
                    f.digest.update(_ZEROS[:n])
                    os.lseek(f.fd, n, os.SEEK_CUR)
                else:
                    n = os.readv(f.fd, [view])
                    f.digest.update(view[:n])
                if n == 0:
                    finished = True
                    break
                f.done += n
                since += n
        except OSError:
            f.done = -1
            finished = True
        if finished:
            line.popleft()
            os.close(f.fd)
            ok = f.done == f.size
            self._answer(f.rid, f.digest.digest() if ok else b"")
        if line:
            self._lines[uid] = line  # back of the turn order

    @staticmethod
    def _hole(f: _File) -> int:
        """Bytes of hole from the offset on (0 in data, or where the file system cannot tell).

        A hole reads as zeros: they are hashed from memory, not read. Read, each 4 KiB of a
        hole is a zeroed page put in the page cache, and a user's 1 GiB sparse file became a
        gibibyte of kernel work and cache churn for the machine."""
        at = os.lseek(f.fd, 0, os.SEEK_CUR)
        if at >= f.size:
            return 0
        try:
            data = os.lseek(f.fd, at, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no data after `at`: a hole to the end
                return 0
            data = f.size
        os.lseek(f.fd, at, os.SEEK_SET)
        return max(0, min(data, f.size) - at)

    def _answer(self, rid: int, digest: bytes) -> None:
        self._sock.send(_ANSWER.pack(rid, 1 if digest else 0, digest))

    def _priority(self, idle: bool) -> None:
        if idle == self._idle:
            return
        with contextlib.suppress(OSError, AttributeError):
            if idle:
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            else:
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            self._idle = idle


def _lowest_priority() -> None:
    """nice 19 and the idle I/O class: the child runs on what the machine does not use."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, 19)
    number = _SYS_IOPRIO_SET.get(platform.machine())
    if number is not None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall(number, _IOPRIO_WHO_PROCESS, 0, _IOPRIO_CLASS_IDLE << 13)


def main(argv: list[str] | None = None) -> int:
    """The child: argv[0] is its end of the socket pair."""
    args = sys.argv[1:] if argv is None else argv
    # A Ctrl-C to snitchd in a terminal reaches us too: snitchd ends us when it stops. If
    # snitchd dies without that, the kernel ends us (PR_SET_PDEATHSIG).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    _lowest_priority()
    sock = socket.socket(fileno=int(args[0]))
    try:
        return _Child(sock).run()
    except (BrokenPipeError, ConnectionResetError):  # snitchd is gone: nothing to say
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
