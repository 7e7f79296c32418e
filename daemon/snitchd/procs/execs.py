"""Which processes exec'd, and what they ran before: the proc connector, for the fallback path.

Without the BPF recorder the owner of a flow is read from /proc *after* the packet arrives, so a
program that calls a non-blocking connect() and at once execve()s an allowed binary would be
named as that binary (issue 14). The kernel's proc connector (netlink CN_IDX_PROC,
CONFIG_PROC_EVENTS) reports every fork and exec with a CLOCK_MONOTONIC timestamp; this thread
keeps, per pid, what it ran before each exec, so `Attributor` can tell that the process it found
exec'd after (or just before) the packet was read, and the firewall decides such a flow by the
stricter of the old and the new identity.

What it knows of a process that existed before snitchd started comes from one /proc walk at
start (in this thread). Forks copy the parent's executable (no /proc read); only an exec reads
/proc/<pid>/exe (one readlink). The thread, not the packet loop, pays for a fork storm; it
holds the GIL for ~10 µs an event. Bounded: `_PIDS_MAX` processes, `_EXECS_MAX` recent execs.

The connector only broadcasts in the initial network namespace: when snitchd runs in another
(the test lab; a container), the socket is made there, through setns() in this thread only.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import socket
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from snitch_common.errors import BackendUnavailable

__all__ = ["Exec", "ExecWatch"]

log = logging.getLogger(__name__)

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
_NLMSG_DONE = 3
_CLONE_NEWNET = 0x40000000

_NLHDR = struct.Struct("=IHHII")
_CNMSG = struct.Struct("=IIIIHH")  # cb_id (idx, val), seq, ack, len, flags
_EVENT = struct.Struct("=IIQ")  # what, cpu, timestamp_ns (CLOCK_MONOTONIC)
_FORK = struct.Struct("=IIII")  # parent pid, parent tgid, child pid, child tgid
_EXEC = struct.Struct("=II")  # pid, tgid

_PIDS_MAX = 1 << 16
_EXECS_MAX = 1 << 14
_HISTORY_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Exec:
    """`tgid` exec'd at `when_ns` (CLOCK_MONOTONIC): it ran `before` until then ("" unknown)."""

    tgid: int
    when_ns: int
    before: str


class ExecWatch:
    """The proc connector in a thread of its own; `since` is called from the loop."""

    def __init__(self) -> None:
        """Subscribe; raises BackendUnavailable when the kernel or our rights do not allow."""
        self._lock = threading.Lock()
        self._exe: OrderedDict[int, str] = OrderedDict()  # tgid -> what it runs, as last seen
        self._execs: OrderedDict[int, list[Exec]] = OrderedDict()  # tgid -> recent execs
        self._lost_warned = 0.0
        self._stop = threading.Event()
        self._sock = self._open()
        self._thread = threading.Thread(target=self._run, name="snitchd-execs", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(2)
        self._sock.close()

    def since(self, tgid: int, since_ns: int) -> list[Exec]:
        """The execs of `tgid` at or after `since_ns`, oldest first (loop-safe: a dict read of
        a list of a few)."""
        with self._lock:
            execs = self._execs.get(tgid)
            return [ex for ex in execs if ex.when_ns >= since_ns] if execs else []

    # -- the thread ---------------------------------------------------------------------------
    def _open(self) -> socket.socket:
        try:
            sock = _in_initial_netns(
                lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
            )
            sock.bind((0, CN_IDX_PROC))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            op = struct.pack("=I", PROC_CN_MCAST_LISTEN)
            cn = _CNMSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(op), 0) + op
            sock.send(_NLHDR.pack(_NLHDR.size + len(cn), _NLMSG_DONE, 0, 0, os.getpid()) + cn)
        except OSError as exc:
            raise BackendUnavailable(
                f"cannot listen to the proc connector: {exc.strerror} (the kernel needs "
                "CONFIG_PROC_EVENTS, snitchd CAP_NET_ADMIN): an exec after connect() goes unseen"
            ) from None
        sock.settimeout(0.5)
        return sock

    def _run(self) -> None:
        self._seed()
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self._lost()
                    continue
                if not self._stop.is_set():
                    log.error("proc connector failed: %s", exc)
                return
            if not data:
                return
            try:
                self._handle(data)
            except (struct.error, IndexError) as exc:
                log.debug("proc connector: malformed message: %s", exc)

    def _lost(self) -> None:
        now = time.monotonic()
        if now - self._lost_warned > 60:
            self._lost_warned = now
            log.warning(
                "proc connector: events lost (a burst of forks and execs): an exec after "
                "connect() may go unseen for a moment"
            )

    def _seed(self) -> None:
        """What every process runs now: the 'before' of its first exec after we started."""
        for name in os.listdir("/proc"):
            if self._stop.is_set():
                return
            if name.isdigit():
                with contextlib.suppress(OSError):
                    self._note(int(name), os.readlink(f"/proc/{name}/exe"))

    def _note(self, tgid: int, exe: str) -> None:
        with self._lock:
            self._exe[tgid] = exe
            self._exe.move_to_end(tgid)
            while len(self._exe) > _PIDS_MAX:
                self._exe.popitem(last=False)

    def _handle(self, data: bytes) -> None:
        off = 0
        while off + _NLHDR.size <= len(data):
            length = _NLHDR.unpack_from(data, off)[0]
            if length < _NLHDR.size:
                return
            body = off + _NLHDR.size + _CNMSG.size
            what, _cpu, when = _EVENT.unpack_from(data, body)
            ev = body + _EVENT.size
            if what == PROC_EVENT_FORK:
                _ppid, ptgid, _pid, tgid = _FORK.unpack_from(data, ev)
                if tgid != ptgid:  # a new process, not a thread
                    with self._lock:
                        parent = self._exe.get(ptgid)
                    if parent is not None:
                        self._note(tgid, parent)
            elif what == PROC_EVENT_EXEC:
                _pid, tgid = _EXEC.unpack_from(data, ev)
                with self._lock:
                    before = self._exe.get(tgid, "")
                try:
                    now = os.readlink(f"/proc/{tgid}/exe")
                except OSError:
                    now = ""
                self._note(tgid, now)
                self._remember(Exec(tgid, when, before))
            off += (length + 3) & ~3

    def _remember(self, ex: Exec) -> None:
        horizon = ex.when_ns - int(_HISTORY_SECONDS * 1e9)
        with self._lock:
            execs = [e for e in self._execs.pop(ex.tgid, []) if e.when_ns >= horizon]
            execs.append(ex)
            self._execs[ex.tgid] = execs
            while len(self._execs) > _EXECS_MAX:
                self._execs.popitem(last=False)


_libc = ctypes.CDLL(None, use_errno=True)
_INITIAL_NETNS = "/proc/2/ns/net"


def _in_initial_netns(make: object) -> socket.socket:
    """`make()` in the initial network namespace, from a short-lived thread of its own (setns
    changes the calling thread only); in our own namespace when it is the initial one.

    The initial namespace is kthreadd's (pid 2): kernel threads live there, and unlike pid 1
    (which a sandbox or container may run unreadable to us, measured here) it is the kernel's.
    """
    assert callable(make)
    own = os.stat("/proc/thread-self/ns/net").st_ino
    if own == os.stat(_INITIAL_NETNS).st_ino:
        sock: socket.socket = make()
        return sock
    result: list[socket.socket | OSError] = []

    def run() -> None:
        try:
            fd = os.open(_INITIAL_NETNS, os.O_RDONLY)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"setns: {os.strerror(code)}")
            finally:
                os.close(fd)
            result.append(make())
        except OSError as exc:
            result.append(exc)

    thread = threading.Thread(target=run, name="snitchd-netns")
    thread.start()
    thread.join()
    got = result[0]
    if isinstance(got, OSError):
        raise got
    return got
