"""A stop flag for snitchd's netlink threads that wakes them at once.

Those threads wait on a netlink socket. They used to wake every second to look at a
`threading.Event`, so every stop of snitchd (systemd's, a test's, a restart's) waited up to a
second for each of them. The flag's eventfd is waited on together with the socket instead.
"""

from __future__ import annotations

import os
import select
import threading
from typing import Protocol

__all__ = ["Stopper"]


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


class Stopper:
    def __init__(self) -> None:
        self._flag = threading.Event()
        self._fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)

    def set(self) -> None:
        if not self._flag.is_set():
            self._flag.set()
            os.eventfd_write(self._fd, 1)

    def is_set(self) -> bool:
        return self._flag.is_set()

    def sleep(self, seconds: float) -> None:
        """Wait `seconds`, or less if stopped meanwhile."""
        self._flag.wait(seconds)

    def readable(self, source: _HasFileno, timeout: float | None = None) -> bool:
        """Wait until `source` can be read (True), or until stopped or `timeout` (False)."""
        if self._flag.is_set():
            return False
        fd = source.fileno()
        ready, _, _ = select.select([fd, self._fd], [], [], timeout)
        return fd in ready and not self._flag.is_set()

    def end(self, thread: threading.Thread | None, timeout: float = 5.0) -> None:
        """Stop `thread` (None, or never started: nothing to wait for) and wait up to `timeout`
        for it; the eventfd is closed once it has ended (one still running may yet select on
        it, and a closed fd number could be another file's by then)."""
        self.set()
        if thread is not None and thread.is_alive():
            thread.join(timeout)
        if thread is None or not thread.is_alive():
            self.close()

    def close(self) -> None:
        """Once the thread that waits has ended; a second call does nothing."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
