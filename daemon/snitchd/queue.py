"""The queue reader: NetfilterQueue's netlink socket on the asyncio loop.

The kernel holds each new outbound flow's first packet in our queue; this module hands it to the
firewall and does nothing else. The socket is read without blocking (`run(block=False)` drains
what is ready) whenever the loop sees it readable, so the loop never waits on the kernel and the
kernel never waits on a person: a packet may be kept (`retain`) and given its verdict later.

Tried and measured slower: a thread of its own in NetfilterQueue's blocking receive loop (the
accept-only ceiling's way), posting prompts and alerts to the loop. bench/connbench.py, same
run, allow rule: 8.8k new connections/s and 0.134 s CPU per 1000 against 12.1k/s and 0.083 s
here (presumably the GIL changing hands between the two threads on every packet).

A read takes at most `BATCH` packets, then gives the loop back: NetfilterQueue's `run` reads until
the socket is empty, which it never is while a user floods one queue (DNS queries as fast as one
process sends them), and the other queue (every user's new flows) waited for the flood to end.
The loop calls `_drain` again at once while packets are left, so a busy queue loses no speed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from netfilterqueue import NetfilterQueue, Packet

from snitch_common.errors import BackendUnavailable

__all__ = ["COPY_RANGE", "QueueReader", "kernel_stats"]

log = logging.getLogger(__name__)

# The columns of /proc/net/netfilter/nfnetlink_queue that `kernel_stats` reports.
_KERNEL_FIELDS = (("held", 2), ("queue_dropped", 5), ("user_dropped", 6), ("queued_total", 7))

# Headers only, the payload is never needed for a verdict, but every header an unprivileged
# program can put before the ports: IPv6 (40) with a routing header (IPV6_RTHDR, up to 2048)
# and a fragment header (8), then TCP (up to 60). A packet cut before its ports is dropped
# (`Firewall._unreadable`), so a shorter copy would deny such a program's flows. The copy
# is the packet's own length when shorter: a SYN costs the same.
COPY_RANGE = 2304

# Packets read per turn of the loop. bench/disturb.py window 10 (a DNS query flood of uid
# 65534, ~7k queries/s), steady client's connect p50/p99/max ms, one day, 2 cores: 32 a turn
# 6.4/24/68, 8 a turn 1.9/12/26, 4 a turn 0.9/5.5/52, 2 a turn 0.7/6.9/24 (undisturbed
# 0.8/3.5/5; before, whole drains: 0.9/3059/3167, 52 of 500 connects made). Four covers the
# backlog of four busy clients in one turn; connbench showed no difference beyond its noise.
BATCH = 4


class _TurnOver(Exception):
    """Raised by the handler after `BATCH` packets to end NetfilterQueue's `run` early (an
    exception from the callback is the only way out of its read loop)."""


class QueueReader:
    def __init__(
        self,
        number: int,
        handler: Callable[[Packet], None],
        max_len: int,
        copy_range: int = COPY_RANGE,
        before: Callable[[], None] | None = None,
    ) -> None:
        """`before` runs before each batch of packets is read (a queue reader process takes
        the main process's rule changes then, so a packet never overtakes one)."""
        self.number = number
        self._before = before
        self._handler = handler
        self._read = 0
        self._max_len = max_len
        self._copy_range = copy_range
        self._nfq: NetfilterQueue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        nfq = NetfilterQueue()
        try:
            nfq.bind(self.number, self._one, max_len=self._max_len, range=self._copy_range)
        except OSError as exc:
            raise BackendUnavailable(
                f"cannot bind netfilter queue {self.number}: {exc} (is another program using "
                "this queue number? is the kernel module nfnetlink_queue available? "
                "try: modprobe nfnetlink_queue)"
            ) from None
        loop.add_reader(nfq.get_fd(), self._drain)
        self._nfq, self._loop = nfq, loop
        log.info("queue bound number=%d max_len=%d", self.number, self._max_len)

    def _one(self, pkt: Packet) -> None:
        self._handler(pkt)
        self._read += 1
        if self._read >= BATCH:
            raise _TurnOver

    def _drain(self) -> None:
        if self._before is not None:
            self._before()
        if self._nfq is not None:
            self._read = 0
            try:
                self._nfq.run(block=False)
            except _TurnOver:
                pass
            except OSError as exc:
                log.warning("queue read failed number=%d: %s", self.number, exc)

    def close(self) -> None:
        if self._nfq is None or self._loop is None:
            return
        self._loop.remove_reader(self._nfq.get_fd())
        self._nfq.unbind()
        self._nfq = None
        log.info("queue unbound number=%d", self.number)


def kernel_stats(
    number: int, count: int = 1, path: str = "/proc/net/netfilter/nfnetlink_queue"
) -> dict[str, int]:
    """The kernel's own counters for our queues `number` … `number + count - 1` (one per
    queue reader process), summed (this network namespace's, or another's by `path`, as the
    benchmark reads snitchd's): packets held right now, queued so far, and those it dropped
    because the queue was full or could not reach us. Empty when no queue is bound."""
    total: dict[str, int] = {}
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                fields = [int(x) for x in line.split()]
                if fields and number <= fields[0] < number + count:
                    for key, index in _KERNEL_FIELDS:
                        total[key] = total.get(key, 0) + fields[index]
    except (OSError, ValueError):
        return {}
    return total
