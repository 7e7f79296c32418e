"""Where attribution's slow work runs: off the packet loop, in slices, fairly between users.

A job is a generator: each `next()` does a bounded slice of work (a few ms of /proc reading, or
a few MiB of hashing when the hasher child, `procs/hasher.py`, cannot run) and yields. Jobs
wait in *lines*, one per user (and one per user for hashing); the worker threads take the lines
in turn, one slice at a time, and never run two slices of one line at once. So one user's
lookups run one after the other, and a user whose processes hold 300k fds makes their own
lookups slow, not anybody else's: another user's job waits for at most one slice per busy line
before its own slice runs.

Threads, not processes: the work is mostly system calls (readlink, getdents, read), which
release the GIL; the loop thread gets it back at the next such call (bench/bench_procs.py
measures the loop's lag while a worker scans). Hashing moved to a child process: a 1 GiB
executable hashed here still cost the loop 40 ms.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Generator, Hashable
from dataclasses import dataclass
from typing import Any

__all__ = ["Job", "Worker"]

log = logging.getLogger(__name__)

Job = Generator[None, None, Any]


@dataclass(slots=True)
class _Task:
    job: Job
    done: Callable[[Any, BaseException | None], None]


class Worker:
    """Threads that run jobs slice by slice, round-robin over lines. Started on first use."""

    def __init__(self, threads: int = 2, name: str = "snitchd-attribution") -> None:
        self._size = threads
        self._name = name
        self._cond = threading.Condition()
        self._lines: dict[Hashable, deque[_Task]] = {}  # insertion order is the turn order
        self._busy: set[Hashable] = set()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(
        self, line: Hashable, job: Job, done: Callable[[Any, BaseException | None], None]
    ) -> None:
        """Queue `job` at the back of `line`; `done(result, error)` runs in a worker thread."""
        with self._cond:
            if self._closed:
                job.close()
                return
            self._lines.setdefault(line, deque()).append(_Task(job, done))
            if len(self._threads) < self._size:
                thread = threading.Thread(
                    target=self._run, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            self._cond.notify()

    def waiting(self, line: Hashable) -> int:
        """Jobs in `line`, the running one included."""
        with self._cond:
            return len(self._lines.get(line, ()))

    def close(self) -> None:
        """Stop the threads after their current slice; jobs not finished are dropped."""
        with self._cond:
            self._closed = True
            lines, self._lines = self._lines, {}
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(5)
        for line in lines.values():
            for task in line:
                task.job.close()

    def _next(self) -> tuple[Hashable, _Task] | None:
        with self._cond:
            while True:
                if self._closed:
                    return None
                for line, tasks in self._lines.items():
                    if line not in self._busy:
                        self._busy.add(line)
                        return line, tasks[0]
                self._cond.wait()

    def _run(self) -> None:
        while (picked := self._next()) is not None:
            line, task = picked
            result: Any = None
            error: BaseException | None = None
            finished = True
            try:
                next(task.job)
                finished = False
            except StopIteration as stop:
                result = stop.value
            except Exception as exc:  # a job's bug must not kill the thread
                error = exc
            with self._cond:
                self._busy.discard(line)
                tasks = self._lines.pop(line, None)
                if tasks is not None:
                    if finished:
                        tasks.popleft()
                    if tasks:
                        self._lines[line] = tasks  # back of the turn order
                self._cond.notify()
            if finished:
                try:
                    task.done(result, error)
                except Exception:
                    log.exception("attribution callback failed")
