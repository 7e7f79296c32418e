"""What a process is: its /proc/<pid>/stat identity, and the details a rule and the log show.

`ProcFds` is the loop's check that a cached process is still the one cached (a /proc/<pid>
directory kept open names one process, its start ticks read once; comm, read per flow, changes
on exec: so a reused pid, or an exec of another name, never inherits an old answer; the proc
connector, `execs`, tells of the others around a connect); `read_stat` the same by path
elsewhere. `Details.describe` (psutil: exe, cmdline, parents; NSS for the user name, maybe LDAP;
the identity checks of `identity` and the script of `scripts`) runs in the attribution worker
only: it is a first sight, and its cost is not ours to bound.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import pwd
import threading

import psutil

from snitch_common.records import Attribution, Process, Source
from snitch_common.rules import DEFAULT_INTERPRETERS
from snitchd.procs.identity import (
    preloaded,
    read_environ,
    tracer_of,
    user_writable,
    verify_path,
    verify_script,
)
from snitchd.procs.scripts import CODE_ENV, Interpreters, script_of

__all__ = ["Details", "ProcFds", "Stat", "exe_id", "process_alive", "read_stat", "start_time"]

log = logging.getLogger(__name__)

_LABELS_MAX = 4096
_MAX_PARENTS = 8
_PRELOAD_ENV = frozenset({"LD_PRELOAD", "LD_AUDIT"})
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_BOOT_TIME = psutil.boot_time()  # read once: start times then agree with each other and psutil

Stat = tuple[str, int, int, bytes]  # state, ppid, start ticks, comm


def read_stat(pid: int) -> Stat | None:
    """/proc/<pid>/stat, or None once the process is gone; os.open is ~2 µs against open()'s ~5."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
    except OSError:
        return None
    return _parse_stat(data)


def _parse_stat(data: bytes) -> Stat:
    head, _, tail = data.rpartition(b")")  # comm may itself hold spaces and parentheses
    fields = tail.split()
    return fields[0].decode(), int(fields[1]), int(fields[19]), head.partition(b"(")[2]


class ProcFds:
    """The /proc/<pid>/fd directories of recent processes, kept open by the packet loop, and
    each one's /proc/<pid>/comm: per flow of a known process, one readlinkat of the socket's fd
    (`holds`, ~2.75 µs here against ~3.4 by path) and one pread of comm (`identity`, ~0.9 µs
    against ~5 µs to pread and parse /proc/<pid>/stat).

    A /proc directory opened once names that process, not the pid, as a pidfd does: once it
    exits, every name under it fails (ENOENT, ESRCH), even if the pid is reused, so a reused
    pid is opened anew and read as the new process it is, never the old. Its start ticks are
    therefore read once, when it is opened (they never change while it lives, exec included);
    only comm, which an exec changes, is read per flow. One thread only (the loop): an fd
    closed here must never be one another thread is reading. At most `size` processes (two fds
    each), the oldest closed first."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._kept: dict[int, tuple[int, int, int]] = {}  # pid -> (fd dir, comm fd, start ticks)

    def holds(self, pid: int, fd: int, inode: int) -> bool:
        """Whether `pid` has socket `inode` open at `fd` right now (as `owners.holds`, exact)."""
        kept = self._kept.get(pid) or self._open(pid)
        if kept is None:
            return False
        try:
            return os.readlink(str(fd), dir_fd=kept[0]) == f"socket:[{inode}]"
        except OSError:
            pass
        if self._alive(kept):
            return False  # that fd is not open
        self._drop(pid)  # it exited: the pid may be another process's now
        kept = self._open(pid)
        if kept is None:
            return False
        try:
            return os.readlink(str(fd), dir_fd=kept[0]) == f"socket:[{inode}]"
        except OSError:
            return False

    def identity(self, pid: int) -> tuple[int, bytes] | None:
        """(start ticks, comm) of the process `holds` last saw as `pid` (`Stat`'s last two
        fields), None once it has exited: never the next process given its pid, which was not
        seen holding anything."""
        kept = self._kept.get(pid) or self._open(pid)
        if kept is None:
            return None
        try:
            comm = os.pread(kept[1], 64, 0)
        except OSError:
            comm = b""
        if not comm:
            self._drop(pid)
            return None
        return kept[2], comm[:-1]  # comm ends with one newline (comm_show: proc_task_name, "\n")

    def exe_id(self, pid: int) -> tuple[int, int] | None:
        """(device, inode) of what that same process runs now (as `exe_id`, through the kept
        directory), None once it has exited."""
        kept = self._kept.get(pid) or self._open(pid)
        if kept is None:
            return None
        try:
            st = os.stat("../exe", dir_fd=kept[0])
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def read(self, pid: int) -> Stat | None:
        """The whole /proc/<pid>/stat of that same process (a first sight: its parent too)."""
        kept = self._kept.get(pid) or self._open(pid)
        if kept is None:
            return None
        data = _read_stat_at(kept[0], "../stat")  # the parent of that very fd directory
        if data is None:
            self._drop(pid)
            return None
        return _parse_stat(data)

    def _open(self, pid: int) -> tuple[int, int, int] | None:
        try:
            dir_fd = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        fd_dir = comm_fd = -1
        try:  # all three through the one directory: the same process, whatever its pid does
            fd_dir = os.open("fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
            comm_fd = os.open("comm", os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
            data = _read_stat_at(dir_fd, "stat")
        except OSError:
            data = None
        finally:
            os.close(dir_fd)
        if data is None:
            for fd in (fd_dir, comm_fd):
                if fd >= 0:
                    os.close(fd)
            return None
        kept = self._kept[pid] = (fd_dir, comm_fd, _parse_stat(data)[2])
        while len(self._kept) > self.size:
            self._drop(next(iter(self._kept)))
        return kept

    @staticmethod
    def _alive(kept: tuple[int, int, int]) -> bool:
        try:
            return bool(os.pread(kept[1], 64, 0))
        except OSError:
            return False

    def _drop(self, pid: int) -> None:
        dir_fd, comm_fd, _ = self._kept.pop(pid)
        os.close(dir_fd)
        os.close(comm_fd)

    def close(self) -> None:
        kept, self._kept = self._kept, {}
        for dir_fd, comm_fd, _ in kept.values():
            os.close(dir_fd)
            os.close(comm_fd)


def _read_stat_at(dir_fd: int, name: str) -> bytes | None:
    """The stat file `name` of the process `dir_fd` (a directory of its /proc) names, None once
    it is gone: the names under a /proc directory of a process that exited fail, ".." too."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        return os.pread(fd, 4096, 0) or None
    except OSError:
        return None
    finally:
        os.close(fd)


def exe_id(pid: int) -> tuple[int, int] | None:
    """(device, inode) of what `pid` runs now (one stat, ~2 µs), None once it is gone."""
    try:
        st = os.stat(f"/proc/{pid}/exe")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def start_time(ticks: int) -> float:
    """Seconds since the epoch, as psutil's create_time() computes it."""
    return _BOOT_TIME + ticks / _CLK_TCK


def process_alive(pid: int, start: float) -> bool:
    """Whether the process a rule was made for still runs: same pid *and* same start time, so
    a reused pid ends an "until the process quits" rule instead of inheriting it. Zombies quit."""
    stat = read_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return False
    return abs(start_time(stat[2]) - start) < 0.5 / _CLK_TCK


class Details:
    """psutil and NSS reads, with the small caches that spare them (thread-safe)."""

    def __init__(self, interpreters: tuple[str, ...] = DEFAULT_INTERPRETERS) -> None:
        self._interpreters = Interpreters(interpreters)
        self._lock = threading.Lock()
        self._labels: dict[tuple[int, int, bytes], str] = {}
        self._users: dict[int, str | None] = {}

    def describe(
        self, pid: int, uid: int, stat: Stat, source: Source = Source.SOCK_DIAG
    ) -> Process | None:
        """Details of a process seen for the first time, without its sha256 (see `hashes`);
        None when it vanished or hides."""
        try:
            ps = psutil.Process(pid)
            with ps.oneshot():
                exe = ps.exe()
                cmdline = tuple(ps.cmdline())
        except psutil.Error as exc:  # NoSuchProcess, ZombieProcess, AccessDenied
            log.debug("process details unavailable pid=%d: %s", pid, exc)
            return None
        again = read_stat(pid)
        # Exited, reused or exec'd while we read: not our process (start time and comm say who
        # it is). The state letter and the parent are left out: a live process goes from running
        # to sleeping, or is reparented, between two reads (the state letter alone dropped 77
        # lookups in 300 of a live process to uid-only, issue 14).
        if again is None or again[2:] != stat[2:] or again[0] in ("Z", "X"):
            return None
        proc = Process(
            attribution=Attribution.PROCESS,
            pid=pid,
            uid=uid,
            exe=exe or None,
            cmdline=cmdline,
            user=self._user(uid),
            ppid=stat[1],
            start_time=start_time(stat[2]),
            parents=self._parents(stat[1]),
            source=source,
        )
        return self._identify(proc) if exe else proc

    def recorded(
        self, pid: int, uid: int, exe: str | None, ticks: int, stat: Stat | None
    ) -> Process:
        """A process as the BPF recorder saw it when it connected: it has exec'd or exited
        since, so nothing of it is read from /proc but its parents (`stat`, when the same
        process still runs). Without a verified executable path it is uid-only."""
        return Process(
            attribution=Attribution.PROCESS if exe else Attribution.UID_ONLY,
            pid=pid,
            uid=uid,
            exe=exe,
            user=self._user(uid),
            ppid=stat[1] if stat else None,
            start_time=start_time(ticks),
            parents=self._parents(stat[1]) if stat else (),
            source=Source.BPF,
        )

    def _identify(self, proc: Process) -> Process:
        """What can be checked of who it is: the path, the script, injected code (issue 14)."""
        assert proc.pid is not None and proc.exe is not None
        pid = proc.pid
        try:
            target = os.stat(f"/proc/{pid}/exe")
        except OSError:
            return dataclasses.replace(proc, verified=False)
        exe, verified = verify_path(pid, proc.exe, target)
        family = self._interpreters.family(exe)
        names = _PRELOAD_ENV | frozenset(CODE_ENV.get(family or "", ()))
        env = read_environ(pid, names)
        script = None
        doubts: tuple[str, ...] = ()
        if family is not None:
            argument = script_of(family, proc.cmdline)
            if argument is not None:
                script, seen = verify_script(pid, argument)
                doubts = tuple(f"{n} set" for n in sorted(env) if n not in _PRELOAD_ENV)
                if not seen:
                    doubts += ("its path unverified",)
        return dataclasses.replace(
            proc,
            exe=exe,
            verified=verified,
            interpreted=family is not None,
            script=script,
            script_doubts=doubts,
            preload=preloaded(pid, env),
            tracer=tracer_of(pid),
            user_writable=user_writable(exe, target),
        )

    def _parents(self, pid: int) -> tuple[tuple[int, str], ...]:
        chain: list[tuple[int, str]] = []
        while pid > 0 and len(chain) < _MAX_PARENTS:
            stat = read_stat(pid)
            if stat is None:
                break
            key = (pid, stat[2], stat[3])
            with self._lock:
                label = self._labels.get(key)
            if label is None:
                label = _parent_label(pid, stat[3])
                with self._lock:
                    self._labels[key] = label
                    extra = max(0, len(self._labels) - _LABELS_MAX)
                    for old in list(itertools.islice(self._labels, extra)):
                        del self._labels[old]
            chain.append((pid, label))
            pid = stat[1]
        return tuple(chain)

    def _user(self, uid: int) -> str | None:
        with self._lock:
            if uid in self._users:
                return self._users[uid]
        name = None
        with contextlib.suppress(KeyError):  # NSS may be LDAP: ask once per uid
            name = pwd.getpwuid(uid).pw_name
        with self._lock:
            self._users[uid] = name
        return name


def _parent_label(pid: int, comm: bytes) -> str:
    """A parent as `parent=` rules see it: its verified path; else `?path` (the path it shows,
    not found here) or `[comm]` (its name, which the process itself sets): neither begins with
    "/", so no rule names them."""
    try:
        exe = psutil.Process(pid).exe()
    except psutil.Error:
        exe = ""
    if not exe:
        return "[" + comm.decode(errors="replace") + "]"
    path, verified = verify_path(pid, exe)
    return path if verified else "?" + path
