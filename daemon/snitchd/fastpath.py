"""The fast path (issue 21): a TCP connect that a rule already allowed, passed by the kernel.

Each new flow through the queue costs snitchd ~100 µs of CPU (the queue's receive and verdict ~40,
Python ~60), and a connect waits for it. But a program connecting again to where a rule let it
connect a moment ago is decided the same way every time, by the same rule, as long as nothing a
decision depends on changed. So after such an allow, snitchd writes, in the cgroup recorder's map
`fast_rules`, the process's identity as the kernel recorded it at connect() (tgid, start time, exec
count, executable's device and inode: an exec, even of the same file, or another process is another
key), the socket's uid and the destination, under the current *generation*. In tcp_connect() the
recorder's sock_ops program finds a connect matching such an entry and marks its socket; the socket
filter `snitch_fast`, first rule of the queue chain, passes that socket's SYN with the allow mark
(the rules after it keep the allow on the conntrack entry, as for a verdict of snitchd), and puts an
event in a ring buffer (`fast_log`). snitchd reads the ring and logs the flow as decided by the
rule, one row per flow as before. A full ring passes nothing: the SYN is queued and decided as any
other.

What is never kept (the flow is queued, as before): a verdict not given by a rule (the default, a
mode, a person: an answer "once" is no rule), anything but an allow, a process whose owner was not
recorded by the hooks (sock_diag and /proc: `Source.BPF` only), whose executable is not verified or
whose code is tampered with, a container's, a connect whose lookup ran late or saw an exec around
it, and any verdict at all while a rule is held whose match varies for one process and one
destination (`decide.varies`: host names, lists and classes, interfaces, time windows, ends). Every
change of what is held (a rule added, changed, removed, turned off, expired; a profile switched; the
rules reloaded) bumps the generation before the change is answered, and the kernel takes an entry of
an older generation for none.

snitchd's own view of a process (verified, tampered, parents, script) is kept per (tgid, start, exec
count, executable, uid) in the attributor and not read again for its later flows: the fast path keys
on the same identity, and so decides no differently than the packet loop would.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from snitch_common.records import Flow, Process, Proto
from snitchd.decide import Verdict
from snitchd.procs.bpf import LibBpf

__all__ = ["DRAIN_MAX", "RING_EVENTS_MAX", "FastPath", "Kept"]

log = logging.getLogger(__name__)

_RULE = struct.Struct("=QQ")  # struct fast_rule: generation, slot
_U64 = struct.Struct("=Q")  # the generation; the ring's consumer and producer positions
_EVENT = struct.Struct("=Q16s16sHHHH")  # struct fast_event
_HEADER = struct.Struct("=II")  # a ring record's length (busy and discard bits) and page offset
_BUSY, _DISCARD = 1 << 31, 1 << 30
_RING_BYTES = 1 << 20  # fast_log's max_entries
RING_EVENTS_MAX = _RING_BYTES // (_HEADER.size + _EVENT.size)  # events the ring holds at most
_SLOTS_MAX = 65536  # fast_rules' max_entries: a slot older than that has no entry left
# Events logged per wake-up of the loop: the ring holds ~18k, and logging one costs ~15 µs; the
# rest wait for the next turn (the ring's fd stays readable), so packets are read in between.
DRAIN_MAX = 256


@dataclass(frozen=True, slots=True)
class Kept:
    """What a kernel-passed flow is logged as: the process and verdict it was allowed with."""

    proc: Process
    verdict: Verdict


class FastPath:
    """The fast path's maps, written and read by snitchd on its loop."""

    def __init__(self, rules_fd: int, gen_fd: int, ring_fd: int) -> None:
        self._lib = LibBpf()
        self._rules_fd, self._gen_fd, self.ring_fd = rules_fd, gen_fd, ring_fd
        self._zero = ctypes.create_string_buffer(4)
        self._value = ctypes.create_string_buffer(_RULE.size)
        self.generation = 0
        self.broken = False  # the generation could not be written: nothing is kept any more
        self._kept: OrderedDict[int, Kept] = OrderedDict()
        self._next_slot = 1
        page = mmap.PAGESIZE
        self._consumer = mmap.mmap(ring_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._producer = mmap.mmap(
            ring_fd, page + 2 * _RING_BYTES, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
        )
        self._page = page
        self.bump()

    def bump(self) -> None:
        """Something a decision depends on changed: every entry kept so far reads as stale.
        Never raises: it runs inside rule changes, which must complete. Should the write fail
        (an array map's one slot, by snitchd's own fd: no known cause), nothing more is kept,
        and the journal says the kernel may still pass what it kept."""
        self.generation += 1
        gen = ctypes.create_string_buffer(_U64.pack(self.generation), _U64.size)
        if self._lib.update(self._gen_fd, self._zero, gen, 0) != 0 and not self.broken:
            self.broken = True
            log.error(
                "fast path: cannot write its generation (%s): nothing more is kept; restart "
                "snitchd to end what the kernel kept",
                os.strerror(ctypes.get_errno()),
            )

    def keep(self, key: bytes, kept: Kept) -> bool:
        """Let the kernel pass the connects `key` names (`Recorder.connected_key`), logged as
        `kept`, until the generation changes. False when the map refused it."""
        if self.broken:
            return False
        slot = self._next_slot
        self._next_slot += 1
        self._kept[slot] = kept
        while len(self._kept) > _SLOTS_MAX:
            self._kept.popitem(last=False)
        _RULE.pack_into(self._value, 0, self.generation, slot)
        raw = ctypes.create_string_buffer(key, len(key))
        return bool(self._lib.update(self._rules_fd, raw, self._value, 0) == 0)

    def drain(self) -> list[tuple[Kept, Flow]]:
        """The flows the kernel passed since the last call, oldest first, of `DRAIN_MAX` events
        at most (events whose slot was forgotten, past `_SLOTS_MAX` newer ones, are skipped)."""
        out: list[tuple[Kept, Flow]] = []
        consumer = _U64.unpack_from(self._consumer, 0)[0]
        producer = _U64.unpack_from(self._producer, 0)[0]
        data, mask = self._page, _RING_BYTES - 1
        for _ in range(DRAIN_MAX):
            if consumer >= producer:
                break
            at = data + (consumer & mask)
            length, _pgoff = _HEADER.unpack_from(self._producer, at)
            if length & _BUSY:
                break
            size = length & ~(_BUSY | _DISCARD)
            if not length & _DISCARD and size == _EVENT.size:
                slot, src, dst, sport, dport, family, _ = _EVENT.unpack_from(
                    self._producer, at + _HEADER.size
                )
                kept = self._kept.get(slot)
                if kept is not None:
                    out.append((kept, Flow(Proto.TCP, _addr(src, family), sport,
                                           _addr(dst, family), dport)))  # fmt: skip
            consumer += (size + _HEADER.size + 7) & ~7
        _U64.pack_into(self._consumer, 0, consumer)
        return out

    @property
    def pending(self) -> bool:
        """Whether the ring holds events not drained yet."""
        consumer = _U64.unpack_from(self._consumer, 0)[0]
        return bool(consumer < _U64.unpack_from(self._producer, 0)[0])

    def close(self) -> None:
        self._consumer.close()
        self._producer.close()


def _addr(raw: bytes, family: int) -> IPv4Address | IPv6Address:
    return ip_address(raw[:4]) if family == 2 else ip_address(raw)
