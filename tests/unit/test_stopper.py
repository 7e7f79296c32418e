"""The netlink threads' stop flag: a thread waiting on its socket with no timeout at all wakes
when snitchd stops (they used to look every second, and every stop waited for that)."""

from __future__ import annotations

import socket
import threading

from snitchd.stopper import Stopper


def _waiter(stop: Stopper, source: socket.socket) -> tuple[threading.Thread, list[bool]]:
    got: list[bool] = []
    thread = threading.Thread(target=lambda: got.append(stop.readable(source)), daemon=True)
    thread.start()
    return thread, got


def test_stop_wakes_a_thread_that_waits_for_ever() -> None:
    stop = Stopper()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        thread, got = _waiter(stop, ours)
        thread.join(0.2)
        assert thread.is_alive(), "it returned with nothing to read and no stop"
        stop.end(thread, 10)  # the owner's close: set, then wait for the thread
        assert not thread.is_alive() and got == [False]
        assert stop.is_set() and stop.readable(ours) is False  # stopped: no more waiting
    stop.close()  # closed by `end` already: the owner's close may come twice


def test_data_wakes_it_and_says_so() -> None:
    stop = Stopper()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        thread, got = _waiter(stop, ours)
        theirs.send(b"change")
        thread.join(10)
        assert got == [True]
        assert stop.readable(ours, timeout=0) is True  # still unread
        ours.recv(16)
        assert stop.readable(ours, timeout=0) is False
    stop.close()
