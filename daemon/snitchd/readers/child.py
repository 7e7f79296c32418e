"""A queue reader process: binds one netfilter queue and decides its new flows with its own
attributor and its copy of the rules (see the package docstring).

It stops when its socket pair to the main process reads end-of-file, and ignores SIGINT, so a
Ctrl-C to snitchd in a terminal lets the main process stop it in order. Packets it still holds
then get the fail-mode verdict, unlogged.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import signal
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

from netfilterqueue import Packet

from snitch_common.recent import Recent
from snitch_common.records import Flow, Process
from snitch_common.rules import Rule
from snitchd.attempts import Attempts
from snitchd.config import Config, FailMode
from snitchd.connmark import ConnMarks
from snitchd.containers import container_names
from snitchd.decide import RuleSet, StricterRules, Verdict
from snitchd.dnswatch import DnsWatch
from snitchd.events import Alert
from snitchd.every import Every
from snitchd.firewall import REMEMBERED_FLOWS, UNREADABLE_SAID_EVERY, Counters, Firewall
from snitchd.journal import setup_logging
from snitchd.knownapps import KnownApps
from snitchd.places import Places
from snitchd.procs import Attributor, Limits, start_attributor
from snitchd.procs.hashes import FileKey
from snitchd.queue import QueueReader
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
    Message,
    NewApp,
    PlacesNow,
    Ready,
    Release,
    Start,
    Tally,
    Whole,
)
from snitchd.rulenews import RuleNews
from snitchd.socketmatch import open_named, open_senders

__all__ = ["ReaderPath", "main"]

log = logging.getLogger(__name__)

TALLY_INTERVAL = 1.0


class ReaderPath(Firewall):
    """The firewall's packet path without what stays in the main process: the store, the
    prompts and modes (`_uncovered` hands the flow over), the log (`_log` sends the verdict),
    the alerts. Built from `Start`, not from a store: `Firewall.__init__` is not called."""

    def __init__(
        self, start: Start, attributor: Attributor, marks: ConnMarks, conn: Connection
    ) -> None:
        config = self.config = start.config
        self.attributor = attributor
        self.clock = time.time
        self.marks = marks
        self.counters = Counters()
        self._logged = Recent(REMEMBERED_FLOWS)
        self._kept = Recent(REMEMBERED_FLOWS)
        self.attempts = Attempts(config.retry_window)  # stays empty: retries are the main's
        self.places = Places()
        self.take_places(start.places)
        self._limits = (None, Limits())
        self.dns = DnsWatch(config, attributor, self.alert, self.clock, self._lookup_limits)
        self.dns.names = start.names
        self.known_apps = KnownApps(start.known_apps)
        self._pinned = {}
        self._pins = {}
        self._expirable = {}
        self._changed_seen = set()
        self._doubted = Recent(REMEMBERED_FLOWS)
        self._ifnames = {}
        self._unreadable_said = Every(UNREADABLE_SAID_EVERY)
        self.named = open_named(Path(start.named)) if start.named else None
        attributor.senders = open_senders(Path(start.senders)) if start.senders else None
        self._named_failed = Every(UNREADABLE_SAID_EVERY)
        self._replay = None
        self.rules_error = ""
        self.disabled = {}
        self._disabled_version = 0
        self._dormant = {}
        self._dormant_version = 0
        self.mirror = None
        self.fast = None  # the kernel keeps nothing for a reader's verdicts (`fastpath`)
        self.news = RuleNews()  # no listener here: RulesChanged is the main process's
        self._conn = conn
        self._out: list[Message] = []
        self._held: dict[int, tuple[Packet, Flow, Process]] = {}
        self._tickets = itertools.count(1)
        self.adopt(start.profile, start.rules)

    def adopt(self, profile: str | None, rules: tuple[tuple[int, Rule], ...]) -> None:
        """Every rule in force, whole (at start, after a reload or a profile switch)."""
        self.profile = profile
        self.rules = RuleSet(rules, places=self.places)
        self._stricter = StricterRules(
            ((i, r) for i, r in rules if i in self.rules), places=self.places
        )
        pins: dict[str, dict[str, int]] = {}
        for _, rule in rules:
            if rule.exe is not None and rule.sha256 is not None:
                hashes = pins.setdefault(rule.exe, {})
                hashes[rule.sha256] = hashes.get(rule.sha256, 0) + 1
        self._pins = pins
        self._pinned = {exe: frozenset(hashes) for exe, hashes in pins.items()}

    def take_places(self, now: PlacesNow) -> None:
        places = self.places
        places.lan, places.broadcast = now.lan, now.broadcast
        places.lists = {loaded.name: loaded for loaded in now.lists}

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.dns.reconfigure(config)

    # -- what goes to the main process -----------------------------------------------------------

    def _post(self, msg: Message) -> None:
        """Sent at the end of this turn of the loop, with the rest of the batch of packets'
        messages: one write and one pickle (which keeps a process seen twice once)."""
        if not self._out:
            asyncio.get_running_loop().call_soon(self.flush)
        self._out.append(msg)

    def flush(self) -> None:
        if self._out:
            out, self._out = self._out, []
            self._conn.send(Batch(tuple(out)))

    def alert(self, alert: Alert) -> None:
        self._post(AlertRaised(alert))

    def hashed(self, key: FileKey, digest: str) -> None:
        self._post(Hashed(key, digest))

    def _new_app(self, proc: Process, flow: Flow, host: str | None, now: float) -> None:
        assert proc.exe is not None
        if self.known_apps.add(proc.exe, proc.uid):
            self._post(NewApp(proc, flow, host, now))

    def _uncovered(
        self,
        pkt: Packet,
        flow: Flow,
        proc: Process,
        now: float,
        host: str | None,
        named: str | None,
    ) -> None:
        ticket = next(self._tickets)
        self._held[ticket] = (pkt, flow, proc)
        self._post(HandOver(ticket, flow, proc, now, host, named))

    def _log(
        self, verdict: Verdict, flow: Flow, proc: Process, now: float, host: str | None
    ) -> None:
        self._post(Logged(verdict, flow, proc, host))

    # -- what comes from it ----------------------------------------------------------------------

    def answered(self, answer: Answer) -> None:
        held = self._held.pop(answer.ticket, None)
        if held is None:
            return
        pkt = held[0]
        try:
            if answer.given is None:
                pkt.drop()
            else:
                verdict, flow, proc, host = answer.given
                self.apply(pkt, verdict, flow, proc, self.clock(), host)
        except Exception:
            self._fail(pkt)

    def release_held(self) -> None:
        """At stop: the packets still waiting for the main process get the fail-mode verdict."""
        for pkt, _, _ in self._held.values():
            try:
                pkt.accept() if self.config.fail_mode is FailMode.OPEN else pkt.drop()
            except Exception:
                log.exception("cannot give the fail-mode verdict")
        self._held.clear()

    def tally(self) -> Tally:
        c = self.counters
        return Tally(
            c.seen,
            c.accepted,
            c.dropped,
            c.rejected,
            c.errors,
            c.by_default,
            c.unmarked,
            c.forwarded,
            tuple(c.attributed.items()),
            time.process_time(),
        )


class _Control:
    """The main process's messages, read before every batch of packets and whenever the
    socket is readable."""

    def __init__(self, conn: Connection, path: ReaderPath, stop: asyncio.Event) -> None:
        self.conn, self.path, self.stop = conn, path, stop

    def read(self) -> None:
        path = self.path
        try:
            while self.conn.poll():
                msg = self.conn.recv()
                if isinstance(msg, Hold):
                    path._hold(msg.record)
                elif isinstance(msg, Release):
                    path._release(msg.rule_id)
                elif isinstance(msg, Answer):
                    path.answered(msg)
                elif isinstance(msg, Learn):
                    path.dns.names.learn(msg.resolutions, msg.now, msg.owner)
                elif isinstance(msg, Hashed):
                    path.attributor.hashes.learn(msg.key, msg.digest)
                elif isinstance(msg, Whole):
                    path.adopt(msg.profile, msg.rules)
                elif isinstance(msg, PlacesNow):
                    path.take_places(msg)
                elif isinstance(msg, Configure):
                    path.reconfigure(msg.config)
                elif isinstance(msg, Forget):
                    path._forget_in_flight(msg.flow)
                else:
                    log.error("unexpected message from snitchd: %r", type(msg).__name__)
        except (EOFError, OSError):
            self.stop.set()


async def _serve(conn: Connection, start: Start) -> None:
    config = start.config
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    attributor = start_attributor(
        config.attribution.value,
        config.bpf_cgroup,
        Path(config.database).parent,
        config.interpreters,
        container_names(config),
        start.recorder,
    )
    marks = ConnMarks()
    path = ReaderPath(start, attributor, marks, conn)

    def hashed(key: FileKey, digest: str) -> None:  # in the thread that finished the hash
        with contextlib.suppress(RuntimeError):  # the loop is closed: the reader is stopping
            loop.call_soon_threadsafe(path.hashed, key, digest)

    attributor.hashes.on_hashed = hashed
    gc.freeze()  # the rules are long-lived, as in the main process
    control = _Control(conn, path, stop)
    reader = QueueReader(start.queue, path.on_packet, config.queue_max_len, before=control.read)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        reader.start(loop)
        loop.add_reader(conn.fileno(), control.read)
        conn.send(Ready(os.getpid()))
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TALLY_INTERVAL)
            path.flush()
            conn.send(path.tally())
    except (BrokenPipeError, ConnectionResetError, EOFError):
        pass  # the main process is gone: stop
    finally:
        loop.remove_reader(conn.fileno())
        with contextlib.suppress(OSError):
            path.flush()
        path.release_held()
        reader.close()
        attributor.close()
        marks.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(int(args[0]))
    try:
        start = conn.recv()
    except (EOFError, OSError):
        return 1
    if not isinstance(start, Start):
        return 2
    setup_logging(start.log_level)
    try:
        asyncio.run(_serve(conn, start))
    except Exception:
        log.exception("queue reader %d failed", start.index)
        return 1
    return 0
