"""Which processes exec'd, and what they ran before: the proc connector, for the fallback path.

Without the BPF recorder the owner of a flow is read from /proc *after* the packet arrives, so a
program that calls a non-blocking connect() and at once execve()s an allowed binary would be
named as that binary (issue 14). The kernel's proc connector (netlink CN_IDX_PROC,
CONFIG_PROC_EVENTS) reports every fork and exec with a CLOCK_MONOTONIC timestamp; a watcher
keeps, per pid, what it ran before each exec, so `Attributor` can tell that the process it found
exec'd after (or just before) the packet was read, and the firewall decides such a flow by the
stricter of the old and the new identity.

The watcher is a child process (this file, run by the interpreter), not a thread of snitchd: the
connector reports every fork of the machine, and any user can fork tens of thousands of times a
second. In a thread, each event held the GIL the packet loop needs for ~10 µs, so a fork storm
was a stall of everyone's connections that any user could cause (issue 12). The child pays for
forks; it sends snitchd only execs (tgid, time, what ran before), which cost the user who makes
them far more than they cost us. snitchd opens the socket (in the initial network namespace,
with its capability) and hands it over, so the child needs neither.

What it knows of a process that existed before it started comes from one /proc walk (in the
child). Forks copy the parent's executable (no /proc read); only an exec reads /proc/<pid>/exe
(one readlink). Bounded: `_PIDS_MAX` processes, `_EXECS_MAX` recent execs. A child that dies is
started again (at most once every `_RESTART_DELAY` seconds); meanwhile no exec is seen, which the
log says.

The connector only broadcasts in the initial network namespace: when snitchd runs in another
(the test lab; a container), the socket is made there, through setns() in a short-lived thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import IO

from snitch_common.errors import BackendUnavailable
from snitchd.children import end_child

__all__ = ["Exec", "ExecWatch", "main"]

log = logging.getLogger(__name__)

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
_NLMSG_DONE = 3
_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1

_NLHDR = struct.Struct("=IHHII")
_CNMSG = struct.Struct("=IIIIHH")  # cb_id (idx, val), seq, ack, len, flags
_EVENT = struct.Struct("=IIQ")  # what, cpu, timestamp_ns (CLOCK_MONOTONIC)
_FORK = struct.Struct("=IIII")  # parent pid, parent tgid, child pid, child tgid
_EXEC = struct.Struct("=II")  # pid, tgid
_RECORD = struct.Struct("=IQH")  # child -> snitchd: tgid, when_ns, len(before); then before
_LOST = 0  # a record with this tgid: the child lost events (ENOBUFS)

_PIDS_MAX = 1 << 16
_EXECS_MAX = 1 << 14
_HISTORY_SECONDS = 30.0
_RESTART_DELAY = 5.0


@dataclass(frozen=True, slots=True)
class Exec:
    """`tgid` exec'd at `when_ns` (CLOCK_MONOTONIC): it ran `before` until then ("" unknown)."""

    tgid: int
    when_ns: int
    before: str


class ExecWatch:
    """snitchd's side: starts the watcher child, reads its execs in a thread; `since` is called
    from the loop."""

    def __init__(self) -> None:
        """Subscribe and start the child; raises BackendUnavailable when the kernel or our
        rights do not allow."""
        self._lock = threading.Lock()
        self._execs: OrderedDict[int, list[Exec]] = OrderedDict()  # tgid -> recent execs
        self._lost_warned = 0.0
        self._stop = threading.Event()
        self._child = self._spawn()
        self._thread = threading.Thread(target=self._run, name="snitchd-execs", daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int:
        """The watcher child's pid (tests end it to see it come back)."""
        return self._child.pid

    def close(self) -> None:
        self._stop.set()
        end_child(self._child)
        self._thread.join(2)

    def since(self, tgid: int, since_ns: int) -> list[Exec]:
        """The execs of `tgid` at or after `since_ns`, oldest first (loop-safe: a dict read of
        a list of a few). No lock: one dict read is atomic, and a list once stored is never
        changed (`_remember` stores a new one); an exec being recorded now is one that is
        reported a moment later, as any may be."""
        execs = self._execs.get(tgid)
        return [ex for ex in execs if ex.when_ns >= since_ns] if execs else []

    # -- the thread ---------------------------------------------------------------------------
    def _spawn(self) -> subprocess.Popen[bytes]:
        sock = _subscribe()
        try:
            return subprocess.Popen(
                # By path, not -m: the package would import psutil and asyncio (~0.1 s, MBs)
                # for a child that needs the standard library only. -P: no script dir on path.
                [sys.executable, "-P", __file__, str(sock.fileno())],
                pass_fds=(sock.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
            )
        except OSError as exc:
            raise BackendUnavailable(f"cannot start the exec watcher: {exc}") from None
        finally:
            sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            out = self._child.stdout
            assert out is not None
            self._read(out)
            if self._stop.is_set():
                return
            end_child(self._child)
            log.error(
                "exec watcher exited (status %s): an exec after connect() goes unseen until it "
                "is back",
                self._child.returncode,
            )
            if self._stop.wait(_RESTART_DELAY):
                return
            try:
                self._child = self._spawn()
            except BackendUnavailable as exc:
                log.error("%s", exc)
                return
            log.info("exec watcher started again pid=%d", self._child.pid)

    def _read(self, out: IO[bytes]) -> None:
        """Records until end of file, or until `close` closed the pipe under the read."""
        while True:
            try:
                head = out.read(_RECORD.size)
                if len(head) < _RECORD.size:
                    return
                tgid, when, size = _RECORD.unpack(head)
                before = out.read(size)
            except (ValueError, OSError):  # ValueError: read of a file `close` closed
                return
            if len(before) < size:
                return
            if tgid == _LOST:
                self._lost()
            else:
                self._remember(Exec(tgid, when, before.decode(errors="replace")))

    def _lost(self) -> None:
        now = time.monotonic()
        if now - self._lost_warned > 60:
            self._lost_warned = now
            log.warning(
                "proc connector: events lost (a burst of forks and execs): an exec after "
                "connect() may go unseen for a moment"
            )

    def _remember(self, ex: Exec) -> None:
        horizon = ex.when_ns - int(_HISTORY_SECONDS * 1e9)
        with self._lock:
            execs = [e for e in self._execs.get(ex.tgid, ()) if e.when_ns >= horizon]
            execs.append(ex)
            # A new list, put in one step (never popped first): `since` reads without the lock.
            self._execs[ex.tgid] = execs
            self._execs.move_to_end(ex.tgid)
            while len(self._execs) > _EXECS_MAX:
                self._execs.popitem(last=False)


def _subscribe() -> socket.socket:
    """A proc connector socket that listens, made in the initial network namespace."""
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
    return sock


class _Watcher:
    """The child: what every process runs, from forks and execs; each exec written out."""

    def __init__(self, sock: socket.socket, out: IO[bytes]) -> None:
        self._sock = sock
        self._out = out
        self._exe: OrderedDict[int, str] = OrderedDict()  # tgid -> what it runs, as last seen

    def run(self) -> int:
        self._seed()
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    print(f"snitchd exec watcher: proc connector failed: {exc}", file=sys.stderr)
                    return 1
                self._send(_LOST, 0, "")
            else:
                if not data:
                    return 0
                with contextlib.suppress(struct.error, IndexError):  # a malformed message
                    self._handle(data)
            self._out.flush()

    def _seed(self) -> None:
        """What every process runs now: the 'before' of its first exec after we started."""
        for name in os.listdir("/proc"):
            if name.isdigit():
                with contextlib.suppress(OSError):
                    self._note(int(name), os.readlink(f"/proc/{name}/exe"))

    def _note(self, tgid: int, exe: str) -> None:
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
                parent = self._exe.get(ptgid)
                if tgid != ptgid and parent is not None:  # a new process, not a thread
                    self._note(tgid, parent)
            elif what == PROC_EVENT_EXEC:
                _pid, tgid = _EXEC.unpack_from(data, ev)
                before = self._exe.get(tgid, "")
                try:
                    now = os.readlink(f"/proc/{tgid}/exe")
                except OSError:
                    now = ""
                self._note(tgid, now)
                self._send(tgid, when, before)
            off += (length + 3) & ~3

    def _send(self, tgid: int, when: int, before: str) -> None:
        raw = before.encode(errors="surrogateescape")[:0xFFFF]
        self._out.write(_RECORD.pack(tgid, when, len(raw)) + raw)


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


def main(argv: list[str] | None = None) -> int:
    """The watcher child: argv[0] is the connector socket's fd; records go to stdout."""
    args = sys.argv[1:] if argv is None else argv
    # A Ctrl-C to snitchd in a terminal reaches us too: snitchd ends us when it stops. If
    # snitchd dies without that, the kernel ends us (PR_SET_PDEATHSIG).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    sock = socket.socket(fileno=int(args[0]))
    try:
        return _Watcher(sock, sys.stdout.buffer).run()
    except BrokenPipeError:  # snitchd is gone (killed): nothing to say, nowhere to flush to
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
