"""`procs.details.StatFds`, the packet loop's /proc/<pid>/stat kept open: the same answers as
`read_stat`, never an old process's for a pid that names another now, bounded in fds."""

from __future__ import annotations

import os
import subprocess

from snitchd.procs.details import StatFds, read_stat


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_reads_as_read_stat_does() -> None:
    stats = StatFds()
    try:
        mine = read_stat(os.getpid())
        assert mine is not None
        for _ in range(2):  # opened, then from the fd kept open
            got = stats.read(os.getpid())
            assert got is not None and got[1:] == mine[1:]
        assert stats.read(-5) is None
    finally:
        stats.close()


def test_a_process_that_exited_is_gone_then_its_pid_is_read_afresh() -> None:
    stats = StatFds()
    child = subprocess.Popen(["sleep", "30"])
    try:
        first = stats.read(child.pid)
        assert first is not None and first[3] == b"sleep"
    finally:
        child.kill()
        child.wait()
    try:
        assert stats.read(child.pid) is None  # reaped: the kept fd fails, the pid is free
        assert stats.read(child.pid) is None
    finally:
        stats.close()


def test_the_kept_fds_are_bounded_and_closed() -> None:
    before = fds()
    stats = StatFds(size=3)
    children = [subprocess.Popen(["sleep", "30"]) for _ in range(5)]
    try:
        for child in children:
            assert stats.read(child.pid) is not None
        assert fds() - before <= 3
    finally:
        for child in children:
            child.kill()
            child.wait()
        stats.close()
    assert fds() == before
