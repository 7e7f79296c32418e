"""A user who hides a socket behind many open files: children holding thousands of fds each,
with newer pids than the holder (so a /proc scan reaches them first). The attribution tests
run it as an unprivileged user; bench_procs measures a lookup behind it.

    python -m tests.support.fdhog HOLDERS FDS HOST PORT   # hold, connect once, print the result
"""

from __future__ import annotations

import os
import resource
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["hidden_behind"]


@contextmanager
def hidden_behind(holders: int, fds: int) -> Iterator[None]:
    """Fork `holders` children that each keep `fds` open fds until the block ends; this process
    keeps none of them, and is the oldest of the lot."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < fds + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (fds + 64, hard))
    go_r, go_w = os.pipe()
    held = [os.open("/dev/null", os.O_RDONLY) for _ in range(fds)]
    kids: list[int] = []
    try:
        for _ in range(holders):
            pid = os.fork()
            if pid == 0:
                os.close(go_w)
                os.read(go_r, 1)
                os._exit(0)
            kids.append(pid)
    finally:
        for fd in (*held, go_r):
            os.close(fd)
    try:
        yield
    finally:
        os.close(go_w)
        for pid in kids:
            os.waitpid(pid, 0)


def main() -> None:
    holders, fds, host, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    with hidden_behind(holders, fds), socket.socket() as s:
        s.settimeout(3)
        try:
            s.connect((host, port))
            print("connected", flush=True)
        except OSError as exc:
            print("timeout" if isinstance(exc, TimeoutError) else exc, flush=True)


if __name__ == "__main__":
    main()
