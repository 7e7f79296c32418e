"""The main process's side of the queue readers: starts one per queue, copies every rule change
to each, takes the flows they hand over to the prompts, writes their log rows, sums their
counters, and replaces one that dies (its queue meanwhile bypassed when fail_mode is open:
`--queue-bypass`; closed, the kernel drops its packets and programs retry).

A reader is spawned (`subprocess`, its own interpreter), never forked: snitchd already runs
threads (attribution, the exec watcher's reader) when readers start or are replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import cast

from netfilterqueue import Packet

from snitch_common.errors import BackendUnavailable
from snitch_common.records import Flow, Process
from snitch_common.rules import Rule, RuleRecord
from snitchd.config import Config, FailMode
from snitchd.decide import Verdict
from snitchd.dnssnoop import Resolution
from snitchd.firewall import Firewall
from snitchd.names import SHARED, NameCache, Owner
from snitchd.procs.bpf import RecorderMaps
from snitchd.readers.handed import Handed
from snitchd.readers.protocol import (
    AlertRaised,
    Answer,
    Batch,
    Configure,
    Forget,
    HandOver,
    Hashed,
    Hold,
    Learn,
    Logged,
    NewApp,
    PlacesNow,
    Ready,
    Release,
    Start,
    Tally,
    Whole,
)

__all__ = ["READY_TIMEOUT", "STUCK_AFTER", "Readers"]

log = logging.getLogger(__name__)

_CHILD = "import sys; from snitchd.readers.child import main; sys.exit(main())"
READY_TIMEOUT = 30.0  # a reader imports the daemon's modules and binds its queue: ~0.5 s
_RESTART_DELAYS = (0.2, 1.0, 5.0)  # after the 1st, 2nd, 3rd+ quick death in a row
_QUICK = 10.0  # a reader that lived less than this died "quickly"
# A ready reader sends its counters every second; one silent this long is stuck (its loop
# blocked): it is killed and replaced, as systemd's watchdog would do to snitchd.
STUCK_AFTER = 10.0
_WATCH_EVERY = 0.25  # how often the readers are checked for that
# Messages to a reader are written without blocking; what its socket does not take waits here
# (the loop must never wait on a reader: it serves every prompt and every other reader). A
# reader that leaves this much unread is taken for stuck before `STUCK_AFTER` (a reload of
# 100k rules is ~30 MB).
UNREAD_MAX = 64 * 1024 * 1024
_FRAME = struct.Struct("!i")  # multiprocessing.connection's length prefix, which `recv` reads


@dataclass(slots=True, eq=False)
class _Reader:
    index: int
    queue: int
    proc: subprocess.Popen[bytes]
    conn: Connection
    started: float
    starts: int
    ready: asyncio.Future[None]
    sock: socket.socket  # `conn`'s socket, for the writes that must not block (`_send`)
    pending: list[object] | None = field(default_factory=list)  # until Start is sent
    out: deque[memoryview] = field(default_factory=deque)  # framed, not yet taken by `sock`
    unsent: int = 0  # bytes in `out`
    tally: Tally | None = None
    alive: bool = True
    heard: float = 0.0  # time.monotonic() of its last message


class _CopiedNames(NameCache):
    """The main process's name cache: every name it learns is copied to the readers."""

    readers: Readers | None = None

    def learn(
        self, resolutions: Iterable[Resolution], now: float, owner: Owner | None = SHARED
    ) -> None:
        resolutions = tuple(resolutions)
        super().learn(resolutions, now, owner)
        if self.readers is not None:
            self.readers.send_all(Learn(resolutions, now, owner))

    def plain(self) -> NameCache:
        """A copy that pickles (without the link to the readers)."""
        copy = NameCache.__new__(NameCache)
        copy.__dict__.update((k, v) for k, v in self.__dict__.items() if k != "readers")
        return copy


class Readers:
    """`count` readers on queues `first` … `first + count - 1` (the kernel rule balances new
    flows over them: `--queue-balance`). The firewall's rule changes reach them through
    `hold`, `release` and `whole` (`firewall.RuleMirror`)."""

    def __init__(self, firewall: Firewall, first: int, count: int) -> None:
        self._fw = firewall
        self.first, self.count = first, count
        self._readers: list[_Reader | None] = [None] * count
        self._quick_deaths = [0] * count
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.log_level = logging.getLogger().getEffectiveLevel()
        config = firewall.config
        names = _CopiedNames(grace=config.dns_grace, max_bytes=config.dns_cache_bytes)
        names.readers = self
        firewall.dns.names = names
        firewall.mirror = self
        firewall.places.on_change = lambda: self.send_all(self._places_now())

    # -- life ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every reader and wait until each has bound its queue (before the kernel rules
        divert anything to them). Raises BackendUnavailable if one cannot."""
        for index in range(self.count):
            self._spawn(index, 0)
        self._keep(self._watch(), "reader-watch")
        for reader in list(self._readers):
            assert reader is not None
            try:
                await asyncio.wait_for(asyncio.shield(reader.ready), READY_TIMEOUT)
            except TimeoutError:
                raise BackendUnavailable(
                    f"queue reader {reader.index} did not bind queue {reader.queue} in "
                    f"{READY_TIMEOUT:.0f} s (see the log above)"
                ) from None
            except EOFError:
                raise BackendUnavailable(
                    f"queue reader {reader.index} exited before binding queue {reader.queue} "
                    "(see the log above)"
                ) from None

    def _spawn(self, index: int, starts: int) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        # The recorder's maps: the reader reads the records of snitchd's programs rather than
        # attaching its own, which every connect() would also run.
        recorder = self._fw.attributor.recorder
        maps = recorder.maps() if recorder is not None else None
        shared = (maps.owners, maps.exes, maps.conns) if maps is not None else ()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(theirs.fileno())],
                pass_fds=(theirs.fileno(), *shared),
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        sock = ours.dup()
        conn = Connection(ours.detach())
        reader = _Reader(
            index,
            self.first + index,
            proc,
            conn,
            time.monotonic(),
            starts + 1,
            loop.create_future(),
            sock,
        )
        self._readers[index] = reader
        loop.add_reader(conn.fileno(), self._read, reader)
        # Pickled here, between two packets (the state it copies changes on the loop), sent from
        # a worker thread: a start with 100k rules and a full name cache is MBs, and the child
        # reads it only once it has imported the daemon's modules. Changes made meanwhile wait
        # in `pending`, in order, and follow it.
        start = ForkingPickler.dumps(self._start_of(reader, maps))
        self._keep(self._send_start(reader, bytes(start)), f"reader-{index}-start")
        log.info("queue reader started index=%d queue=%d pid=%d", index, reader.queue, proc.pid)

    def _start_of(self, reader: _Reader, maps: RecorderMaps | None) -> Start:
        fw = self._fw
        names = fw.dns.names
        plain = names.plain() if isinstance(names, _CopiedNames) else names
        return Start(
            fw.config,
            reader.queue,
            reader.index,
            fw.profile,
            fw.held_rules(),
            self._places_now(),
            plain,
            tuple(fw.known_apps),
            self.log_level,
            maps,
            str(fw.named.pin) if fw.named is not None else "",
            str(senders.pin) if (senders := fw.attributor.senders) is not None else "",
        )

    async def _send_start(self, reader: _Reader, start: bytes) -> None:
        try:
            await asyncio.to_thread(reader.conn.send_bytes, start)
        except OSError as exc:
            log.warning("queue reader %d not started: %s", reader.index, exc)
            return
        pending, reader.pending = reader.pending or [], None
        for msg in pending:
            self._send(reader, msg)

    def _keep(self, coro: Coroutine[object, object, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        """Stop every reader: each gives the packets it holds the fail-mode verdict and
        unbinds its queue when its socket pair closes."""
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        readers = [r for r in self._readers if r is not None]
        for reader in readers:
            self._drop(reader)
        for reader in readers:
            try:
                reader.proc.wait(5)
            except subprocess.TimeoutExpired:
                log.warning("queue reader %d did not stop: killed", reader.index)
                reader.proc.kill()
                reader.proc.wait()
        log.info("queue readers stopped count=%d", len(readers))

    def _drop(self, reader: _Reader) -> None:
        if not reader.alive:
            return
        reader.alive = False
        with contextlib.suppress(RuntimeError, ValueError, OSError):
            loop = asyncio.get_running_loop()
            loop.remove_reader(reader.conn.fileno())
            loop.remove_writer(reader.sock.fileno())
        reader.out.clear()
        reader.sock.close()
        reader.conn.close()
        if not reader.ready.done():
            reader.ready.set_exception(EOFError())
            reader.ready.exception()  # retrieved: a start-up failure is raised by `start`

    def _lost(self, reader: _Reader, why: str) -> None:
        """A reader died: its queue is bypassed or closed until its successor binds it."""
        if not reader.alive or self._closing:
            return
        self._drop(reader)
        if reader.proc.poll() is None:
            reader.proc.kill()  # stuck or unreachable: its queue must be free for the next
        status = reader.proc.poll()
        fail_open = self._fw.config.fail_mode is FailMode.OPEN
        quick = time.monotonic() - reader.started < _QUICK
        self._quick_deaths[reader.index] = self._quick_deaths[reader.index] + 1 if quick else 0
        delay = _RESTART_DELAYS[min(self._quick_deaths[reader.index], len(_RESTART_DELAYS)) - 1]
        delay = delay if quick else _RESTART_DELAYS[0]
        log.error(
            "queue reader %d exited (pid %d, %s, status %s): queue %d is %s until it is "
            "replaced, in %.1f s",
            reader.index, reader.proc.pid, why, status, reader.queue,
            "bypassed (fail_mode open)" if fail_open else "closed (fail_mode closed)", delay,
        )  # fmt: skip
        self._keep(self._replace(reader, delay), f"reader-{reader.index}-replace")

    async def _replace(self, reader: _Reader, delay: float) -> None:
        await asyncio.to_thread(_reap, reader.proc)
        await asyncio.sleep(delay)
        if self._closing:
            return
        self._spawn(reader.index, reader.starts)

    # -- to the readers --------------------------------------------------------------------------

    def _send(self, reader: _Reader, msg: object) -> None:
        """Frame `msg` as `Connection.send` does and write what the socket takes now; the rest
        is written when it can take more (`_flush`). Never blocks: a reader that stopped
        reading would otherwise stop this whole process until it was killed."""
        if not reader.alive:
            return
        if reader.pending is not None:
            reader.pending.append(msg)
            return
        data = ForkingPickler.dumps(msg)
        waiting = bool(reader.out)
        reader.out.append(memoryview(_FRAME.pack(len(data)) + data))
        reader.unsent += _FRAME.size + len(data)
        if reader.unsent > UNREAD_MAX:
            self._lost(reader, f"not reading: {reader.unsent} bytes wait for it, killed")
        elif not waiting:
            self._flush(reader)

    def _flush(self, reader: _Reader) -> None:
        out = reader.out
        try:
            while out:
                head = out[0]
                sent = reader.sock.send(head, socket.MSG_DONTWAIT)
                reader.unsent -= sent
                if sent < len(head):
                    out[0] = head[sent:]
                    break
                out.popleft()
        except BlockingIOError:
            pass
        except OSError as exc:
            self._lost(reader, f"cannot reach it: {exc}")
            return
        loop = asyncio.get_running_loop()
        if out:
            loop.add_writer(reader.sock.fileno(), self._flush, reader)
        else:
            loop.remove_writer(reader.sock.fileno())

    def send_all(self, msg: object) -> None:
        for reader in self._readers:
            if reader is not None:
                self._send(reader, msg)

    def hold(self, record: RuleRecord) -> None:
        self.send_all(Hold(record))

    def release(self, rule_id: int) -> None:
        self.send_all(Release(rule_id))

    def whole(self, profile: str | None, rules: tuple[tuple[int, Rule], ...]) -> None:
        self.send_all(Whole(profile, rules))

    def forget(self, flow: Flow) -> None:
        self.send_all(Forget(flow))

    def reconfigure(self, config: Config) -> None:
        self.send_all(Configure(config))

    def _places_now(self) -> PlacesNow:
        places = self._fw.places
        return PlacesNow(places.lan, places.broadcast, tuple(places.lists.values()))

    async def _watch(self) -> None:
        """The readers' watchdog (`STUCK_AFTER`)."""
        while True:
            await asyncio.sleep(_WATCH_EVERY)
            late = time.monotonic() - STUCK_AFTER
            for reader in self._readers:
                if reader is not None and reader.alive and reader.ready.done() \
                        and reader.heard < late:  # fmt: skip
                    self._lost(reader, f"silent for {STUCK_AFTER:.0f} s: stuck, killed")

    # -- from the readers ------------------------------------------------------------------------

    def _read(self, reader: _Reader) -> None:
        reader.heard = time.monotonic()
        try:
            while reader.alive and reader.conn.poll():
                msg = reader.conn.recv()
                if isinstance(msg, Batch):
                    for each in msg.messages:
                        self._take(reader, each)
                else:
                    self._take(reader, msg)
        except (EOFError, OSError) as exc:
            self._lost(reader, str(exc) or "end of file")
        except Exception:  # not one of ours (unpicklable): the stream cannot be trusted
            log.exception("message from queue reader %d unreadable", reader.index)
            self._lost(reader, "unreadable message")

    def _take(self, reader: _Reader, msg: object) -> None:
        """One message; one that fails is logged, and the rest of its batch still taken."""
        fw = self._fw
        try:
            if isinstance(msg, Logged):
                fw.log_verdict(msg.verdict, msg.flow, msg.proc, msg.host)
            elif isinstance(msg, Tally):
                self._add(reader, msg)
            elif isinstance(msg, HandOver):
                handed = cast(Packet, Handed(msg.ticket, partial(self._answer, reader)))
                fw.handed_over(handed, msg.flow, msg.proc, msg.now, msg.host, msg.named)
            elif isinstance(msg, NewApp):
                fw.app_seen(msg.proc, msg.flow, msg.host, msg.now)
            elif isinstance(msg, AlertRaised):
                fw.alert(msg.alert)
            elif isinstance(msg, Hashed):
                for other in self._readers:
                    if other is not None and other is not reader:
                        self._send(other, msg)
            elif isinstance(msg, Ready):
                if not reader.ready.done():
                    reader.ready.set_result(None)
                log.info("queue reader ready index=%d queue=%d pid=%d", reader.index,
                         reader.queue, msg.pid)  # fmt: skip
            else:
                log.error("unexpected message from queue reader %d: %r", reader.index,
                          type(msg).__name__)  # fmt: skip
        except Exception:
            log.exception("message from queue reader %d failed", reader.index)

    def _answer(
        self, reader: _Reader, ticket: int, given: tuple[Verdict, Flow, Process, str | None] | None
    ) -> None:
        self._send(reader, Answer(ticket, given))

    def _add(self, reader: _Reader, tally: Tally) -> None:
        """The firewall's counters are the main process's plus every reader's, past and
        present: each tally adds what changed since the reader's last one."""
        last, reader.tally = reader.tally, tally
        c = self._fw.counters
        for name in (
            "seen", "accepted", "dropped", "rejected", "errors", "by_default", "unmarked",
            "forwarded",
        ):  # fmt: skip
            delta = getattr(tally, name) - (getattr(last, name) if last else 0)
            setattr(c, name, getattr(c, name) + delta)
        before = dict(last.attributed) if last else {}
        for key, value in tally.attributed:
            c.attributed[key] = c.attributed.get(key, 0) + value - before.get(key, 0)


def _reap(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
