"""`procs.details.ProcFds`, the packet loop's /proc/<pid> directories kept open: the same answers
as `read_stat` and `owners.holds`, never an old process's for a pid that names another now,
bounded in fds."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from snitchd.procs.details import ProcFds, read_stat
from snitchd.procs.owners import holds

# A child that names itself with what a comm may hold (spaces, parentheses, a newline), prints
# "ready", and holds a socket; its fd number, then inode on the next lines.
_NAMED = r"""
import ctypes, os, socket, sys
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)  # PR_SET_NAME
s = socket.socket()
print(s.fileno(), os.fstat(s.fileno()).st_ino, flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def named_child(name: str) -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    """The child of `_NAMED`, its socket's fd and inode; killed and reaped on the way out."""
    with subprocess.Popen(
        [sys.executable, "-c", _NAMED, name], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as child:
        try:
            assert child.stdout is not None
            fd, inode = (int(x) for x in child.stdout.readline().split())
            yield child, fd, inode
        finally:
            child.kill()


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_reads_as_read_stat_does() -> None:
    kept = ProcFds()
    try:
        mine = read_stat(os.getpid())
        assert mine is not None
        for _ in range(2):  # opened, then from the fds kept open
            got = kept.read(os.getpid())
            assert got is not None and got[1:] == mine[1:]
            assert kept.identity(os.getpid()) == mine[2:]
        assert kept.read(-5) is None
        assert kept.identity(-5) is None
    finally:
        kept.close()


def test_identity_is_stats_start_and_comm_whatever_the_comm_holds() -> None:
    """The loop keys its cache by the comm file's bytes, the worker by stat's: they must agree
    for any name a process gives itself (else every flow of it would be a worker job)."""
    kept = ProcFds()
    for name in ("plain", "a) (b c", "x\ny", "((", "sixteen-chars-ok"):
        with named_child(name) as (child, _, _):
            stat = read_stat(child.pid)
            assert stat is not None and stat[3] == name.encode()[:15]
            assert kept.identity(child.pid) == stat[2:]
    kept.close()


def test_holds_answers_as_owners_holds() -> None:
    kept = ProcFds()
    a, b = socket.socketpair()
    try:
        pid, ino = os.getpid(), os.fstat(a.fileno()).st_ino
        for _ in range(2):
            assert kept.holds(pid, a.fileno(), ino) and holds(pid, a.fileno(), ino)
            assert not kept.holds(pid, b.fileno(), ino) and not holds(pid, b.fileno(), ino)
            assert not kept.holds(pid, 100_000, ino)  # no such fd: this process is alive
            assert not kept.holds(-5, a.fileno(), ino)
    finally:
        a.close()
        b.close()
        kept.close()


def test_a_process_that_exited_is_gone_then_its_pid_is_read_afresh() -> None:
    kept = ProcFds()
    with named_child("sleeper") as (child, fd, inode):
        assert kept.holds(child.pid, fd, inode)
        first = kept.identity(child.pid)
        assert first is not None and first[1] == b"sleeper"
    try:
        assert kept.identity(child.pid) is None  # reaped: the kept fds fail, the pid is free
        assert not kept.holds(child.pid, fd, inode)
        assert kept.read(child.pid) is None
        assert kept.identity(child.pid) is None
    finally:
        kept.close()


def test_the_kept_fds_are_bounded_and_closed() -> None:
    before = fds()
    kept = ProcFds(size=3)
    children = [subprocess.Popen(["sleep", "30"]) for _ in range(5)]
    try:
        for child in children:
            assert kept.read(child.pid) is not None
        assert fds() - before <= 2 * 3
    finally:
        for child in children:
            child.kill()
            child.wait()
        kept.close()
    assert fds() == before


def _child_with_pid(pid: int, name: str) -> contextlib.AbstractContextManager[Any] | None:
    """`named_child(name)` under `pid` again (ns_last_pid, as CRIU does; root only), or None
    when another process of the machine took that pid first every time."""
    for _ in range(50):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        cm = named_child(name)
        got = cm.__enter__()
        if got[0].pid == pid:
            return _Entered(cm, got)
        cm.__exit__(None, None, None)
    return None


class _Entered(contextlib.AbstractContextManager[Any]):
    def __init__(self, cm: contextlib.AbstractContextManager[Any], got: Any) -> None:
        self._cm, self._got = cm, got

    def __enter__(self) -> Any:
        return self._got

    def __exit__(self, *exc: object) -> None:
        self._cm.__exit__(None, None, None)


@pytest.mark.skipif(os.geteuid() != 0, reason="ns_last_pid needs root")
def test_a_reused_pid_is_never_answered_for_by_the_process_kept_before() -> None:
    """The kept directory names the process, not the pid: once a new process holds the pid
    (and a socket at the same fd), the old record answers nothing, and `holds` sees the new
    process as itself: its own start and name, never the old one's."""
    kept, other = ProcFds(), ProcFds()
    try:
        with named_child("old-owner") as (old, fd, inode):
            pid = old.pid
            assert kept.holds(pid, fd, inode) and other.holds(pid, fd, inode)
            before = kept.identity(pid)
            assert before is not None and before[1] == b"old-owner"
        entered = _child_with_pid(pid, "new-owner")
        if entered is None:
            pytest.skip("the machine took that pid every time")
        with entered as (new, new_fd, new_inode):
            assert new.pid == pid
            assert other.read(pid) is None  # the old record's stat ("../stat"): gone
            assert kept.identity(pid) is None  # the old record: gone, not the new process
            assert not kept.holds(pid, fd, inode)  # the old socket: nobody has it now
            assert kept.holds(pid, new_fd, new_inode)
            now = kept.identity(pid)
            stat = read_stat(pid)
            assert now is not None and stat is not None and now == stat[2:]
            assert now[1] == b"new-owner"
            got = kept.read(pid)
            assert got is not None and got[1:] == stat[1:]
    finally:
        kept.close()
        other.close()
