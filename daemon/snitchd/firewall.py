"""The packet path in one place: queued packet → Flow → Process → decide → verdict, logged.

`on_packet` runs on the event loop for every new outbound flow. It never blocks and never raises:
any failure on one packet is logged, counted, and that packet gets the fail-mode verdict (accept
when fail_mode is open, drop when closed), and the loop carries on.

Rule changes never make the loop wait: the store is written from a worker thread, then the one
rule is added to or taken from the `RuleSet` on the loop, between two packets (µs, whatever the
number of rules); the next new flow already sees it. Only a change made outside snitchd (sqlite3
by hand) reads the rules whole, in a worker thread, and swaps the new set in. Rule changes are
serialised by one asyncio lock, so the D-Bus caller waits for a slow store, and packets do not.

A verdict is also kept on the flow's conntrack entry (`connmark`), so the kernel decides the
flow's later packets itself and they never come back (issue 12). Packets of the flow that were
queued before that (a burst sent faster than we decide) still arrive: they get the flow's verdict
as long as they come from the same process or from a socket that is gone (a program that sent a
burst and exited is no longer found, and would otherwise fall to the default), and are not
logged again: the log gets one row per flow and verdict, not one per packet.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from netfilterqueue import Packet

from snitch_common.errors import RuleNotFound, StoreError
from snitch_common.modes import Mode, ModeState
from snitch_common.records import Attribution, Flow, Process
from snitch_common.rules import Action, Lifetime, Rule, RuleRecord, list_place
from snitchd.attempts import Attempts, RowRef, attempt_key
from snitchd.config import Config, FailMode, PinAnswers
from snitchd.connmark import ConnMarks
from snitchd.decide import Ask, RuleSet, StricterRules, Verdict, decide
from snitchd.dnswatch import DnsWatch
from snitchd.events import Alert, EventLog
from snitchd.flowcut import CutResult, FlowCutter
from snitchd.journal import Event, journal_fields
from snitchd.lists import Lists
from snitchd.modes import Modes
from snitchd.netfilter import ALLOW_MARK, MARK_MASK, REJECT_MARK, verdict_mark
from snitchd.packet import decode
from snitchd.places import Places
from snitchd.procs import Attributor, Limits, Lookup, process_alive
from snitchd.prompts import SYSTEM_UID_MAX, Broker, Quotas
from snitchd.proposals import ProposalBook
from snitchd.rulefiles import FileRead, read_rules_dir
from snitchd.rulenews import RuleNews
from snitchd.store import (
    Decision,
    FileSync,
    RuleLoad,
    Store,
    UnparsableRule,
    keep_unexpired,
)

__all__ = ["Counters", "CutFlow", "Firewall", "local_time", "quotas_of"]

log = logging.getLogger(__name__)

T = TypeVar("T")
# A row is skipped for a packet whose flow got the same verdict, from the same rule, for the same
# process, less than this many seconds before (sliding): the packets queued before the kernel
# took the flow over arrive within milliseconds, or all at once when a prompt ends; 30 s is
# nf_conntrack_udp_timeout, the life of a one-way UDP flow the kernel could not keep.
_REPEAT_SECONDS = 30.0
_REPEATS_MAX = 4096  # flows remembered for that; the oldest go first
# A packet of a flow whose verdict the kernel keeps was queued before the mark was set: such
# packets drain in well under a second at the queue's rate. Short, because a TCP entry may end
# 10 s after a reset (nf_conntrack_tcp_timeout_close), and a new connection on the same ports
# is a new flow to decide.
_IN_FLIGHT_SECONDS = 5.0
_NF_INET_FORWARD = 2  # the netfilter hook a forwarded packet was queued in


@dataclass(frozen=True, slots=True)
class _Kept:
    """A verdict the kernel keeps for a flow, and for whom it was given."""

    verdict: Verdict
    proc: Process
    host: str | None
    at: float


@dataclass(frozen=True, slots=True)
class CutFlow:
    """An open flow cut because a rule now denies it (`cut_flows`)."""

    flow: Flow
    proc: Process
    rule_id: int
    action: Action
    reset: bool  # its TCP socket was destroyed: the peer got a reset, the program an error


# Open flows judged per turn of the loop while looking for those a new rule covers (each is
# one attribution and one rule match, µs): the loop serves packets between two turns.
_CUT_BATCH = 64


@dataclass(slots=True)
class Counters:
    """What `snitchctl status` shows about the queue since start."""

    seen: int = 0
    accepted: int = 0
    dropped: int = 0
    rejected: int = 0
    errors: int = 0
    by_default: int = 0
    repeats: int = 0  # packets of a flow already logged with the same verdict: no new row
    retries: int = 0  # new flows that retried a blocked attempt: counted on its row (attempts)
    unmarked: int = 0  # verdicts the kernel could not keep: those flows come back to the queue
    cut: int = 0  # open flows cut because a rule added or enabled later denies them
    # Decided flows by how their owner was found (Source values), for the metrics (issue 20).
    attributed: dict[str, int] = field(default_factory=dict)
    forwarded: int = 0  # packets of containers' and guests' flows (FORWARD hook, issue 16)
    started: float = field(default_factory=time.time)


class Firewall:
    def __init__(
        self,
        config: Config,
        store: Store,
        attributor: Attributor,
        events: EventLog,
        broker: Broker,
        clock: Callable[[], float] = time.time,
        marks: ConnMarks | None = None,
    ) -> None:
        """`marks`: where verdicts are kept in the kernel; None keeps none (every packet of a
        flow that stays conntrack NEW is then queued and decided again)."""
        self.config = config
        self.store = store
        self.attributor = attributor
        self.events = events
        self.broker = broker
        self.clock = clock
        self.marks = marks
        self.counters = Counters()
        self._logged: dict[tuple[object, ...], float] = {}
        self._kept: dict[Flow, _Kept] = {}
        self.attempts = Attempts(config.retry_window)
        self.places = Places()  # classes and lists (to=lan, to=list:NAME), swapped in whole
        self.rules = RuleSet(places=self.places)
        self.lists = Lists(
            Path(config.database).parent / "lists.json",
            Path(config.lists_dir),
            self.places,
            self.alert,
            clock,
        )
        self.lists.on_loaded = self._list_loaded
        self.dns = DnsWatch(config, attributor, self.alert, clock, self._lookup_limits)
        self.known_apps: dict[str, str | None] = store.known_apps()
        self._pinned: dict[str, frozenset[str]] = {}
        self._pins: dict[str, dict[str, int]] = {}  # exe -> sha256 -> rules pinning it
        self._expirable: dict[int, RuleRecord] = {}
        self._changed_seen: set[tuple[str, str | None]] = set()
        self._doubted: dict[tuple[str, str], None] = {}  # (exe, kind) alerted, oldest first
        self._ifnames: dict[int, str] = {}
        self._changing = asyncio.Lock()  # one rule change (or outside reload) at a time
        self._replay: list[RuleRecord | int] | None = None  # own changes during a reload
        self._tasks: set[asyncio.Task[object]] = set()
        self._limits: tuple[Config | None, Limits] = (None, Limits())
        self._stricter = StricterRules(places=self.places)
        self._entries: tuple[object, list[tuple[int, Rule]]] = (None, [])
        self.rules_error = ""  # why the held rules are not the store's (status), "" if they are
        self.disabled: dict[int, RuleRecord] = {}  # rules switched off: listed, never matched
        self._disabled_version = 0
        self.cutter = FlowCutter()
        self.files_error = ""  # why a rules.d file was refused at the last reload, "" if none
        # What decides a flow no rule covers (issue 17); `switching.Switcher` loads the stored
        # mode and proposals, and changes them.
        self.modes = Modes(
            ModeState(Mode.ASK),
            ProposalBook(config.max_proposals, system_uid_max=SYSTEM_UID_MAX),
            pin_root=config.pin_answers is PinAnswers.ALWAYS,
        )
        self.profile: str | None = None  # the active profile, None for none
        # Rules of profiles not active: stored, listed, but not held (they decide nothing).
        self._dormant: dict[int, RuleRecord] = {}
        self._dormant_version = 0
        self.news = RuleNews()  # every change of the held rules, told as RulesChanged
        self.reload_rules()

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.broker.reconfigure(
            config.prompt_timeout,
            config.max_prompts,
            quotas_of(config),
            pin_root=config.pin_answers is PinAnswers.ALWAYS,
            hold_max=config.prompt_hold_max,
        )
        self.dns.reconfigure(config)
        self.attempts.configure(config.retry_window)
        self.attempts.clear()  # the default action may have changed: retries are decided afresh
        self.modes.pin_root = config.pin_answers is PinAnswers.ALWAYS
        self.modes.book.max_total = config.max_proposals

    async def check_outside_change(self, now: float) -> None:
        """Another process may have written the rules (sqlite3 by hand, or malware): if so,
        alert, then follow the store, which stays the one source of truth. snitchd's own
        writes are not news (the store tells them apart). The rules are read, parsed and
        indexed in a worker thread; the loop only swaps the new set in."""
        async with self._changing:
            if not await asyncio.to_thread(self.store.changed_outside):
                return
            replay: list[RuleRecord | int] = []
            self._replay = replay
            try:
                loaded = await asyncio.to_thread(self._load, self.rules, self.profile)
            except UnparsableRule as exc:
                # Fail closed: the rules held stay (a deny that no longer parses still
                # denies); the next change to the store is read again.
                self.store.adopt_version(exc.version)
                self.rules_error = exc.message
                self.alert(Alert("rules-unreadable", f"{exc.message}; the last good rules "
                                 "stay in force", now))  # fmt: skip
                return
            finally:
                self._replay = None
            self.rules_error = ""
            load, added, removed = self._take(loaded)
            gc.freeze()  # long-lived, as at start (main): out of the collector's full passes
            # Prompt answers (which do not wait for the lock) made while the rules were read:
            # whichever side of the read they fell, the held set ends as the store is.
            for change in replay:
                if isinstance(change, RuleRecord):
                    added.discard(change.id)
                    if change.id not in self.rules:
                        self._hold(change)
                else:
                    removed.discard(change)
                    if change in self.rules:
                        self._release(change)
            self.store.adopt_version(load.version)
            log.info("rules reloaded from the store count=%d", len(self.rules))
        if added or removed:
            self.alert(
                Alert(
                    "rules-changed",
                    f"rules were changed outside snitch: {len(added)} added or changed, "
                    f"{len(removed)} removed (see: snitchctl list-rules)",
                    now,
                )
            )

    def _take(self, loaded: _Loaded) -> tuple[RuleLoad, set[int], set[int]]:
        """Swap in what `_load` read (on the loop, between packets); the load and which ids
        were added and removed."""
        load, rules, stricter, (expirable, pins), added, removed, dormant = loaded
        self.rules, self._stricter = rules, stricter
        self._expirable, self._pins = expirable, pins
        self._pinned = {exe: frozenset(hashes) for exe, hashes in pins.items()}
        self.disabled = {r.id: r for r in load.records if not r.enabled}
        self._disabled_version += 1
        self._expirable.update((i, r) for i, r in self.disabled.items() if _expires(r.rule))
        self._dormant, self._dormant_version = dormant, self._dormant_version + 1
        self.news.everything()
        return load, added, removed

    def _load(self, held: RuleSet, profile: str | None) -> _Loaded:
        """In a worker thread: the store's rules that are on and in force in `profile` (None:
        no profile), indexed and tracked, which ids differ from `held`, and the rules (on) of
        the other profiles. The load's records keep the rules that are off."""
        before = held.snapshot()
        load = self.store.load_rules()
        dormant = {r.id: r for r in load.records if r.enabled and not _in_force(r.rule, profile)}
        enabled = [r for r in load.records if r.enabled and r.id not in dormant]
        rules = RuleSet(((r.id, r.rule) for r in enabled), places=self.places)
        added: set[int] = set()
        for r in enabled:
            old = before.pop(r.id, None)
            if old is None or (old[1] is not r.rule and old[1] != r.rule):
                added.add(r.id)
        # A for=once rule is never held, so it is no news either.
        added = {i for i in added if i in rules}
        stricter = StricterRules(
            ((r.id, r.rule) for r in enabled if r.id in rules), places=self.places
        )
        return load, rules, stricter, _tracking(enabled), added, set(before), dormant

    def reload_rules(self) -> None:
        """Read every rule and index them, on the calling thread: at start, before the loop
        runs packets (afterwards, `check_outside_change` does it in a worker thread)."""
        load = self.store.load_rules()
        self.disabled = {r.id: r for r in load.records if not r.enabled}
        self._disabled_version += 1
        self._dormant = {
            r.id: r for r in load.records if r.enabled and not _in_force(r.rule, self.profile)
        }
        self._dormant_version += 1
        live = [r for r in load.records if r.enabled and r.id not in self._dormant]
        self.rules = RuleSet(((r.id, r.rule) for r in live), places=self.places)
        self._stricter = StricterRules(
            ((r.id, r.rule) for r in live if r.id in self.rules), places=self.places
        )
        self._expirable, self._pins = _tracking(live)
        self._expirable.update((i, r) for i, r in self.disabled.items() if _expires(r.rule))
        self._pinned = {exe: frozenset(hashes) for exe, hashes in self._pins.items()}
        self.store.adopt_version(load.version)
        log.debug("rules loaded count=%d", len(self.rules))

    def _hold(self, record: RuleRecord) -> None:
        """Put one rule in the held set (on the loop, between packets); a rule that is off is
        only listed, a rule of a profile not active is kept aside."""
        self._release(record.id)
        self.news.changed(record.id)
        if not record.enabled:
            self.disabled[record.id] = record
            self._disabled_version += 1
            if _expires(record.rule):  # off or on, its time still runs out
                self._expirable[record.id] = record
            return
        rule = record.rule
        if not _in_force(rule, self.profile):
            self._dormant[record.id] = record
            self._dormant_version += 1
            if self._replay is not None:
                self._replay.append(record)
            return
        self.rules.add((record.id, rule))
        if record.id not in self.rules:
            return  # for=once: never held
        self._stricter.add(record.id, rule)
        if _expires(rule):
            self._expirable[record.id] = record
        if rule.exe is not None and rule.sha256 is not None:
            hashes = self._pins.setdefault(rule.exe, {})
            hashes[rule.sha256] = hashes.get(rule.sha256, 0) + 1
            self._pinned[rule.exe] = frozenset(hashes)
        if self._replay is not None:
            self._replay.append(record)

    def _release(self, rule_id: int) -> None:
        """Take one rule out of the held set (on the loop, between packets)."""
        self.news.removed(rule_id)
        if self.disabled.pop(rule_id, None) is not None:
            self._disabled_version += 1
        if self._dormant.pop(rule_id, None) is not None:
            self._dormant_version += 1
            if self._replay is not None:
                self._replay.append(rule_id)
            return
        entry = self.rules.remove(rule_id)
        if entry is None:
            return
        self._stricter.remove(rule_id)
        self._expirable.pop(rule_id, None)
        rule = entry[1]
        if rule.exe is not None and rule.sha256 is not None:
            hashes = self._pins[rule.exe]
            hashes[rule.sha256] -= 1
            if not hashes[rule.sha256]:
                del hashes[rule.sha256]
            if hashes:
                self._pinned[rule.exe] = frozenset(hashes)
            else:
                del self._pins[rule.exe], self._pinned[rule.exe]
        if self._replay is not None:
            self._replay.append(rule_id)

    def _ifname(self, index: int) -> str:
        name = self._ifnames.get(index)
        if name is None:
            try:
                name = socket.if_indextoname(index) if index else ""
            except OSError:
                return ""
            self._ifnames[index] = name
        return name

    def on_packet(self, pkt: Packet) -> None:
        """Decide now when attribution answers from memory; else hold the packet until the
        worker's answer (or the lookup's deadline), and return at once (issue 12)."""
        self.counters.seen += 1
        try:
            flow = decode(pkt.get_payload(), self._ifname(pkt.outdev))
            if pkt.hook == _NF_INET_FORWARD:  # a container's or guest's flow (issue 16)
                self.counters.forwarded += 1
                found = self.attributor.begin_forwarded(
                    flow, pkt.indev, self._lookup_limits(), pkt.get_hw() or b""
                )
            else:
                found = self.attributor.begin(flow, self._lookup_limits())
            if isinstance(found, Lookup):
                found.future.add_done_callback(lambda _: self._resume(pkt, flow, found))
            else:
                self._decide(pkt, flow, found)
        except Exception:
            self._fail(pkt)

    def _lookup_limits(self) -> Limits:
        config = self.config
        if self._limits[0] is not config:
            limits = Limits(config.attribution_timeout, config.max_hash_bytes, config.hash_wait)
            self._limits = (config, limits)
        return self._limits[1]

    def _resume(self, pkt: Packet, flow: Flow, lookup: Lookup) -> None:
        """A held packet whose lookup has ended."""
        try:
            self._decide(pkt, flow, lookup.future.result(), lookup)
        except Exception:
            self._fail(pkt)

    def _fail(self, pkt: Packet) -> None:
        self.counters.errors += 1
        log.exception(
            "packet handling failed; fail-mode verdict fail_mode=%s", self.config.fail_mode.value
        )
        try:
            if self.config.fail_mode is FailMode.OPEN:
                pkt.accept()
            else:
                pkt.drop()
        except Exception:
            log.exception("cannot give the fail-mode verdict")

    def _decide(self, pkt: Packet, flow: Flow, proc: Process, lookup: Lookup | None = None) -> None:
        now = self.clock()
        kept = self._in_flight(flow, proc, now)
        if kept is not None:
            self._give(pkt, kept.verdict, flow, proc)
            self._log(kept.verdict, flow, kept.proc, now, kept.host)
            return
        # Only names this flow's own process (or user, or a system service) resolved.
        names, host = self.dns.names_for(flow.dst, proc, now)
        # A container's executable is its file, not the host's: not an app of this machine.
        exe = proc.exe if proc.container is None else None
        if exe is not None and exe not in self.known_apps:
            self._new_app(proc, flow, host, now)
        if exe is not None and (proc.tampered or not proc.verified):
            self._identity_doubted(proc, now)
        pinned = self._pinned.get(exe) if exe is not None else None
        if pinned and proc.sha256 not in pinned:
            self._exe_changed(proc, pinned, now)
        outcome = decide(flow, proc, self.rules, now, names)
        if lookup is not None and (lookup.late or lookup.hash_late):
            outcome = self._no_laxer(outcome, flow, proc, lookup, names, now)
        if lookup is not None and lookup.note is not None:
            outcome = self._by_both(outcome, flow, lookup, names, now)
        if isinstance(outcome, Ask):
            # No rule covers it: a retry of an attempt blocked without a rule (answered once,
            # timed out, no agent) gets that verdict again, and no new prompt (`attempts`).
            tried = self.attempts.recall(attempt_key(flow, proc), now)
            if tried is not None and tried.rule_id is None:
                outcome = Verdict(tried.action, None, tried.reason)
        if isinstance(outcome, Verdict):
            self.apply(pkt, outcome, flow, proc, now, host)
        else:
            named = self.dns.own_name(flow.dst, proc, now) if host is not None else None
            self._uncovered(pkt, flow, proc, now, host, named)

    def _uncovered(
        self,
        pkt: Packet,
        flow: Flow,
        proc: Process,
        now: float,
        host: str | None,
        named: str | None,
    ) -> None:
        """No rule covers the flow: the mode decides it, or in `ask` mode a person (or the
        default action) does (issue 17)."""
        verdict = self.mode_verdict(flow, proc, host, now)
        if verdict is None:
            self.broker.ask(pkt, flow, proc, now, host, named, self.profile)
        else:
            self.apply(pkt, verdict, flow, proc, now, host)

    def mode_verdict(
        self, flow: Flow, proc: Process, host: str | None, now: float
    ) -> Verdict | None:
        """The mode's verdict for a flow no rule covers (None in `ask` mode); a `learn`
        proposal that found no room alerts the admins once, until there is room again."""
        book = self.modes.book
        left_out = book.left_out
        verdict, _ = self.modes.verdict(flow, proc, host, now)
        if book.left_out != left_out and not self.modes.full_alerted:
            self.modes.full_alerted = True
            self.alert(
                Alert(
                    "proposals-full",
                    f"learn mode: no room for more proposals ({len(book)} kept, at most "
                    f"{book.max_total}, a quarter of it per user); new destinations are "
                    "allowed but not proposed (review them: snitchctl proposals)",
                    now,
                )
            )
        return verdict

    def _no_laxer(
        self,
        outcome: Verdict | Ask,
        flow: Flow,
        proc: Process,
        lookup: Lookup,
        names: frozenset[str],
        now: float,
    ) -> Verdict | Ask:
        """A lookup that ran out of time must not decide more leniently than its owner would
        have been decided: uid-only must not escape an app rule that blocks (the sender may be
        that app), nor an unknown digest a pinned rule that blocks (it may be that digest)."""
        if lookup.late:
            why = f"owner not found in {time.monotonic() - lookup.started:.1f} s: uid-only"
        else:
            why = "sha256 unknown: not hashed in time, rules pinning a digest do not match"
        if isinstance(outcome, Verdict) and outcome.action is not Action.ALLOW:
            return Verdict(outcome.action, outcome.rule_id, f"{outcome.reason} ({why})")
        blocking = self._stricter.any_app if lookup.late else self._stricter.pins_open
        hit = blocking.match(flow, proc, names, now)
        if hit is None:
            if isinstance(outcome, Verdict):
                return Verdict(outcome.action, outcome.rule_id, f"{outcome.reason} ({why})")
            return outcome
        rule_id, rule = hit
        return Verdict(
            rule.action,
            rule_id,
            f"rule {rule_id} ({why}; it {rule.action.value}s a flow like this one of an app "
            "it could be, and the stricter outcome applies)",
        )

    def _by_both(
        self,
        outcome: Verdict | Ask,
        flow: Flow,
        lookup: Lookup,
        names: frozenset[str],
        now: float,
    ) -> Verdict | Ask:
        """A process that exec'd around its connect (issue 14): a deny or reject *of its other
        identity's app* (`lookup.also`: a rule naming that app; digest unknown, so pinned rules
        match it pin or no pin) wins over an allow of this one; the log says why. Otherwise this
        identity's outcome stands: rules for every app, an Ask or the default of the other would
        judge every program a shell or `ip netns exec` starts by its starter (`deny
        to=*.example.org` beside `allow app=X to=api.example.org` denied X in its first 250 ms)."""
        why = lookup.note or ""
        if lookup.also:
            why += f"; the stricter of this and {', '.join(str(p.exe) for p in lookup.also)}"
        if isinstance(outcome, Verdict) and outcome.action is not Action.ALLOW:
            return Verdict(outcome.action, outcome.rule_id, f"{outcome.reason} ({why})")
        for other in lookup.also:
            theirs = self.rules.match(flow, other, names, now)
            if theirs is not None and theirs[1].exe is not None:
                rule_id, rule = theirs
                if rule.action is not Action.ALLOW:
                    return Verdict(rule.action, rule_id, f"rule {rule_id} ({why})")
            hit = self._stricter.pins_open.match(flow, other, names, now)
            if hit is not None:
                rule_id, rule = hit
                return Verdict(rule.action, rule_id, f"rule {rule_id} ({why}, pin or no pin)")
        if isinstance(outcome, Verdict):
            return Verdict(outcome.action, outcome.rule_id, f"{outcome.reason} ({why})")
        return outcome

    def _rules_key(self) -> tuple[RuleSet, int, int, int]:
        """Names the rule set as it is now (and the rules that are off or of another profile,
        which `rule_entries` lists too): caches built from it compare this."""
        return (self.rules, self.rules.version, self._disabled_version, self._dormant_version)

    async def rule_entries(self) -> list[tuple[int, Rule]]:
        """The rules held, by id, as one list made once per rule change: a slice of it is a
        consistent page for `ListRules`. Sorted in a worker: at 100k rules, sorting on the loop
        stalled it ~100 ms (bench/disturb.py)."""
        source, entries = self._entries
        key = self._rules_key()
        if source != key:
            snapshot = self.rules.snapshot()
            snapshot.update((i, (i, r.rule)) for i, r in self.disabled.items())
            snapshot.update({i: (i, r.rule) for i, r in self._dormant.items()})  # all profiles'
            entries = await asyncio.to_thread(_by_id, snapshot)
            self._entries = (key, entries)
        return entries

    def on_dns_packet(self, pkt: Packet) -> None:
        """A DNS query leaving or an answer arriving: `dnswatch` records, judges, learns; the
        packet always passes."""
        self.dns.on_packet(pkt)

    def _new_app(self, proc: Process, flow: Flow, host: str | None, now: float) -> None:
        assert proc.exe is not None
        self.known_apps[proc.exe] = proc.sha256
        self.events.note_app(proc.exe, now, proc.sha256)
        where = f"{host} ({flow.dst})" if host else str(flow.dst)
        self.alert(
            Alert(
                "new-app",
                f"{proc.exe} connects for the first time, to {where}",
                now,
                proc.uid,
                proc.exe,
            )
        )

    def _exe_changed(self, proc: Process, pinned: frozenset[str], now: float) -> None:
        assert proc.exe is not None
        key = (proc.exe, proc.sha256)
        if key in self._changed_seen:
            return
        self._changed_seen.add(key)
        if proc.sha256 is None:
            what = f"{proc.exe} could not be hashed in time (or at all)"
        else:
            what = f"{proc.exe} changed: sha256 {proc.sha256} is not the one its rules pin"
        self.alert(
            Alert(
                "exe-changed",
                f"{what} ({', '.join(sorted(pinned))}); those rules do not match it",
                now,
                proc.uid,
                proc.exe,
            )
        )

    def _identity_doubted(self, proc: Process, now: float) -> None:
        """Alert once per executable and doubt: an unverified path, or injected code (issue 14)."""
        assert proc.exe is not None
        kind = "unverified-exe" if not proc.verified else "injected-code"
        key = (proc.exe, kind)
        if key in self._doubted:
            return
        self._doubted[key] = None
        if len(self._doubted) > _REPEATS_MAX:
            del self._doubted[next(iter(self._doubted))]
        what = ", ".join(n for n in proc.notes() if not n.startswith(("script ", "inline code")))
        self.alert(
            Alert(
                kind,
                f"{proc.exe} (pid {proc.pid}): {what}; rules naming it "
                + ("do not match it" if kind == "unverified-exe" else "do not allow it"),
                now,
                proc.uid,
                proc.exe,
            )
        )

    def alert(self, alert: Alert) -> None:
        """To the journal, and to the agents of the user concerned (admins for the system)."""
        log.warning(
            "alert %s: %s", alert.kind, alert.message,
            extra=journal_fields(Event.ALERT, kind=alert.kind, exe=alert.exe, uid=alert.uid),
        )  # fmt: skip
        self.broker.alert(alert)

    def apply(
        self,
        pkt: Packet,
        verdict: Verdict,
        flow: Flow,
        proc: Process,
        now: float,
        host: str | None = None,
    ) -> None:
        """Give the kernel the verdict, keep it on the flow's conntrack entry, then log it (the
        log never delays the packet; the verdict comes first, so nothing after it can lose it)."""
        self._give(pkt, verdict, flow, proc)
        if self._keep(flow, verdict.action):
            self._kept.pop(flow, None)
            self._kept[flow] = _Kept(verdict, proc, host, now)
            if len(self._kept) > _REPEATS_MAX:
                del self._kept[next(iter(self._kept))]
        self._log(verdict, flow, proc, now, host)

    def _give(self, pkt: Packet, verdict: Verdict, flow: Flow, proc: Process) -> None:
        action = verdict.action
        if action is Action.ALLOW:
            pkt.accept()
            self.counters.accepted += 1
        elif action is Action.DENY:
            pkt.drop()
            self.counters.dropped += 1
        else:
            pkt.set_mark((pkt.get_mark() & ~MARK_MASK) | REJECT_MARK)
            pkt.accept()
            self.counters.rejected += 1
        if verdict.rule_id is None:
            self.counters.by_default += 1
        if proc.source is not None:
            key = proc.source.value
            self.counters.attributed[key] = self.counters.attributed.get(key, 0) + 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "verdict %s %s from %s: %s", action.value, flow, proc.describe(), verdict.reason,
                extra=journal_fields(
                    Event.DECISION, exe=proc.exe, dst=str(flow), verdict=action.value,
                    rule_id=verdict.rule_id, uid=proc.uid,
                ),
            )  # fmt: skip

    def _log(
        self, verdict: Verdict, flow: Flow, proc: Process, now: float, host: str | None
    ) -> None:
        if self._repeat((flow, verdict.action, verdict.rule_id, proc.pid, proc.uid, proc.exe), now):
            self.counters.repeats += 1
            return
        blocked = verdict.action is not Action.ALLOW
        key = attempt_key(flow, proc) if blocked else None
        tried = self.attempts.recall(key, now)
        if (
            key is not None
            and tried is not None
            and tried.action is verdict.action
            and tried.rule_id == verdict.rule_id
        ):
            # The same attempt again: one more retry on its row, no row, no rule hit.
            self.attempts.retried(key, tried, now)
            self.counters.retries += 1
            self.events.retry(tried.row)
            return
        reason = verdict.reason
        if notes := proc.notes():  # unverified, script, preloaded, traced (issue 14)
            reason = f"{reason} [{'; '.join(notes)}]"
        self.events.record(
            Decision(
                now,
                flow,
                proc,
                verdict.action,
                verdict.rule_id,
                reason,
                host,
                self.modes.state.mode.value,
                self.profile,
            )
        )
        if key is not None:
            row = RowRef(now, flow.proto.value, str(flow.src), flow.sport, str(flow.dst),
                         flow.dport)  # fmt: skip
            self.attempts.remember(key, verdict.action, verdict.rule_id, verdict.reason, row, now)

    def _keep(self, flow: Flow, action: Action) -> bool:
        """Mark the flow's conntrack entry with the verdict. An allowed packet has just been
        sent, so its entry exists and is updated; a dropped or rejected one left none, so it is
        created (see `connmark`). A failure costs only speed: the flow is queued again."""
        if self.marks is None:
            return False
        try:
            return self.marks.mark(
                flow, verdict_mark(action), MARK_MASK, create=action is not Action.ALLOW
            )
        except OSError as exc:
            self.counters.unmarked += 1
            if log.isEnabledFor(logging.DEBUG):
                log.debug("verdict not kept in conntrack for %s: %s", flow, exc.strerror)
            return False

    def _in_flight(self, flow: Flow, proc: Process, now: float) -> _Kept | None:
        """The kept verdict of `flow` if this packet was queued before the kernel took the flow
        over (see `_IN_FLIGHT_SECONDS`) and nobody else sent it: the same process, or a socket
        that is gone (no socket: the sender exited; its uid only: its process is gone). Another
        process on the same ports is decided afresh: it never borrows someone's verdict."""
        kept = self._kept.get(flow)
        if kept is None or not 0 <= now - kept.at < _IN_FLIGHT_SECONDS:
            return None
        if (
            proc == kept.proc
            or proc.attribution is Attribution.KERNEL
            or (proc.attribution is Attribution.UID_ONLY and proc.uid == kept.proc.uid)
        ):
            return kept
        return None

    def _repeat(self, key: tuple[object, ...], now: float) -> bool:
        """Whether a row for `key` was written less than `_REPEAT_SECONDS` ago; remembers now."""
        last = self._logged.pop(key, None)
        self._logged[key] = now
        if len(self._logged) > _REPEATS_MAX:
            del self._logged[next(iter(self._logged))]
        return last is not None and 0 <= now - last < _REPEAT_SECONDS

    def default_verdict(self, reason: str) -> Verdict:
        return Verdict(self.config.default_action, None, reason)

    async def add_rule(self, rule: Rule, origin: str) -> RuleRecord:
        """Store the rule (in a worker thread: a locked store delays only this caller), then
        hold it. Raises StoreError (store locked, unwritable) or RuleError."""
        return (await self.add_new_rule(rule, origin))[0]

    async def add_new_rule(
        self, rule: Rule, origin: str, note: str = "", *, dedup: bool = False
    ) -> tuple[RuleRecord, bool]:
        """`add_rule`, with a note; with `dedup`, a rule equal to one there already is not
        added: that one is returned, and False. A new deny or reject rule cuts the open flows
        it now covers (unless keep-open=yes), in the background."""

        async def change() -> tuple[RuleRecord, bool]:
            async with self._changing:
                record, added = await asyncio.to_thread(
                    self.store.added_rule, rule, self.clock(), origin, note, dedup=dedup
                )
                if added:
                    self._hold(record)
            if added:
                log.info(
                    "rule added id=%d origin=%s: %s", record.id, origin, record.rule,
                    extra=journal_fields(Event.RULE_ADDED, rule_id=record.id, exe=record.rule.exe),
                )  # fmt: skip
                self._cut_soon([record], origin)
            return record, added

        return await self._finish(change())

    async def delete_rule(self, rule_id: int, origin: str) -> RuleRecord:
        """Delete the rule from the store (in a worker thread), then stop holding it. Raises
        RuleNotFound, RuleFromFile or StoreError."""

        async def change() -> RuleRecord:
            async with self._changing:
                record = await asyncio.to_thread(self.store.delete_rule, rule_id)
                self._release(rule_id)
            log.info(
                "rule deleted id=%d origin=%s: %s", rule_id, origin, record.rule,
                extra=journal_fields(Event.RULE_DELETED, rule_id=rule_id, exe=record.rule.exe),
            )  # fmt: skip
            return record

        return await self._finish(change())

    async def edit_rule(
        self, rule_id: int, rule: Rule | None, note: str | None, origin: str
    ) -> RuleRecord:
        """New text (None: keep it) and/or a new note (None: keep it) for a rule, same id. An
        edit that makes a deny or reject rule cuts the open flows it now covers."""

        async def change() -> RuleRecord:
            async with self._changing:
                if rule is None:
                    assert note is not None
                    record = await asyncio.to_thread(self.store.set_note, rule_id, note)
                else:
                    record = await asyncio.to_thread(
                        self.store.edit_rule, rule_id, rule, self.clock(), note
                    )
                self._hold(record)
            log.info("rule edited id=%d origin=%s: %s", rule_id, origin, record.rule)
            if rule is not None:
                self._cut_soon([record], origin)
            return record

        return await self._finish(change())

    async def set_rule_enabled(self, rule_id: int, enabled: bool, origin: str) -> RuleRecord:
        """Switch a rule on or off; switched on, a deny or reject rule cuts the open flows it
        now covers."""

        async def change() -> RuleRecord:
            async with self._changing:
                record = await asyncio.to_thread(self.store.set_enabled, rule_id, enabled)
                self._hold(record)
            log.info(
                "rule %s id=%d origin=%s: %s",
                "enabled" if enabled else "disabled",
                rule_id,
                origin,
                record.rule,
            )
            if enabled:
                self._cut_soon([record], origin)
            return record

        return await self._finish(change())

    async def import_rules(
        self, rules: list[Rule], origin: str, *, dry_run: bool
    ) -> tuple[list[RuleRecord], list[tuple[Rule, int]]]:
        """Add every rule not there yet, in one store transaction (all or nothing), then hold
        them; `dry_run` only says what would be added. Returns (added, (twin rule, its id))."""

        async def change() -> tuple[list[RuleRecord], list[tuple[Rule, int]]]:
            async with self._changing:
                added, twins = await asyncio.to_thread(
                    self.store.import_rules, rules, self.clock(), origin, dry_run=dry_run
                )
                if not dry_run:
                    for record in added:
                        self._hold(record)
            if not dry_run:
                log.info("rules imported origin=%s added=%d", origin, len(added))
                self._cut_soon(added, origin)
            return added, twins

        return await self._finish(change())

    # -- rules.d files -------------------------------------------------------------------------

    def load_rule_files_now(self) -> None:
        """At start, before the loop runs packets: the rules.d files into the store, then the
        held set follows what changed (the rules were read whole when the firewall was made)."""
        for sync in self._sync_files(self.clock()):
            for record in sync.removed:
                self._release(record.id)
            for record in sync.added:
                self._hold(record)

    async def reload_rule_files(self) -> None:
        """On reload (SIGHUP): read the files and update the store in a worker thread, then
        hold what changed; a refused file keeps its old rules."""

        async def change() -> None:
            async with self._changing:
                synced = await asyncio.to_thread(self._sync_files, self.clock())
                added: list[RuleRecord] = []
                for sync in synced:
                    for record in sync.removed:
                        self._release(record.id)
                    for record in sync.added:
                        self._hold(record)
                    added += sync.added
            self._cut_soon(added, "rules files")

        await self._finish(change())

    def _sync_files(self, now: float) -> list[FileSync]:
        """Read `rules_dir` and make the store's file rules match it. Every refused file is
        logged as an error with its reason (file and line) and keeps its rules."""
        folder = self.config.rules_dir
        files, exists = read_rules_dir(folder)
        errors: list[str] = []
        synced: list[FileSync] = []
        refused = [f for f in files if f.error]
        for read in refused:
            log.error("rules file refused, its old rules stay: %s", read.error)
            errors.append(read.error)
        if any(f.name == "*" for f in refused):
            self.files_error = "; ".join(errors)
            return synced  # the folder itself is unsafe or unreadable: change nothing
        good: list[FileRead] = [f for f in files if not f.error]
        present = {f.name for f in files}
        for read in good:
            sync = self.store.sync_file(read.name, list(read.rules), now)
            synced.append(sync)
        for gone in sorted(self.store.file_names() - present):
            synced.append(self.store.sync_file(gone, [], now))
        for sync in synced:
            if sync.added or sync.removed:
                log.info(
                    "rules file loaded name=%s added=%d removed=%d kept=%d",
                    sync.name,
                    len(sync.added),
                    len(sync.removed),
                    sync.kept,
                )
        if not exists:
            log.debug("no rules folder %s", folder)
        self.files_error = "; ".join(errors)
        return synced

    # -- cutting open flows ----------------------------------------------------------------------

    def _cut_soon(self, records: list[RuleRecord], origin: str) -> None:
        """Start `cut_flows` for the deny and reject rules among `records` that are on and
        may cut, in the background: the caller of a rule change does not wait for it."""
        ids = {
            r.id
            for r in records
            if r.enabled and r.rule.action is not Action.ALLOW and not r.rule.keep_open
        }
        self._cut_ids_soon(ids, origin)

    def _cut_ids_soon(self, ids: set[int], origin: str, because: str = "") -> None:
        if not ids or self.marks is None:
            return
        cutting = self._cut_logged(ids, origin, because)
        task = asyncio.get_running_loop().create_task(cutting, name="cut")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cut_logged(self, rule_ids: set[int], origin: str, because: str) -> None:
        try:
            await self.cut_flows(rule_ids, origin, because)
        except Exception:
            log.exception("cutting open flows failed rules=%s", sorted(rule_ids))

    async def cut_flows(
        self, rule_ids: Collection[int], why: str, because: str = ""
    ) -> list[CutFlow]:
        """Cut the open flows that snitch let out and that one of `rule_ids` now denies or
        rejects, as the held rules decide them now (a more specific allow keeps its flow;
        keep-open=yes keeps them all). The one entry point for anything that makes rules
        stricter (a rule added, edited or enabled; a list that grows).

        The conntrack dump and the cuts run in a worker thread; on the loop, the flows are
        attributed and decided in batches of `_CUT_BATCH`, as new packets would be. Each cut
        is logged (INFO) and written to the connection log with reason "cut: rule N", and
        `because` (what changed, where it was not the rule itself: "list ads updated").
        """
        wanted = set(rule_ids)
        flows = await asyncio.to_thread(self.cutter.allowed_flows, ALLOW_MARK, MARK_MASK)
        chosen: list[tuple[Flow, Process, int, Action, str | None]] = []
        for i in range(0, len(flows), _CUT_BATCH):
            batch = flows[i : i + _CUT_BATCH]
            for flow in batch:
                proc = await self._owner_of(flow)
                now = self.clock()
                names, host = self.dns.names_for(flow.dst, proc, now)
                outcome = decide(flow, proc, self.rules, now, names)
                if (
                    isinstance(outcome, Verdict)
                    and outcome.rule_id in wanted
                    and outcome.action is not Action.ALLOW
                ):
                    rule_id = outcome.rule_id
                    assert rule_id is not None
                    held = self.rules.get(rule_id)
                    if held is not None and not held[1].keep_open:
                        chosen.append((flow, proc, rule_id, outcome.action, host))
            await asyncio.sleep(0)
        if not chosen:
            return []
        results = await asyncio.to_thread(self.cutter.cut, [c[0] for c in chosen])
        now = self.clock()
        out: list[CutFlow] = []
        for (flow, proc, rule_id, action, host), result in zip(chosen, results, strict=True):
            if not (result.reset or result.deleted):
                if result.error:
                    log.warning("open flow not cut %s rule=%d: %s", flow, rule_id, result.error)
                continue
            out.append(_cut_record(result, proc, rule_id, action))
            self._forget_in_flight(flow)
            self.counters.cut += 1
            log.info(
                "open flow cut rule=%d why=%s reset=%s: %s from %s",
                rule_id,
                why,
                result.reset,
                flow,
                proc.describe(),
            )
            reason = f"cut: rule {rule_id} now {action.value}s this open flow"
            if because:
                reason += f" ({because})"
            self.events.record(Decision(now, flow, proc, action, rule_id, reason, host))
        return out

    def _forget_in_flight(self, flow: Flow) -> None:
        """A cut flow's next packet is decided afresh, never as one in flight (`_in_flight`)."""
        ends = (flow.proto, flow.src, flow.sport, flow.dst, flow.dport)
        for kept in [k for k in self._kept if (k.proto, k.src, k.sport, k.dst, k.dport) == ends]:
            del self._kept[kept]

    async def _owner_of(self, flow: Flow) -> Process:
        """Who holds an open flow, as a packet of it would be attributed (a TCP flow's
        socket is still there; a UDP flow's may be gone: then the kernel's)."""
        try:
            found = self.attributor.begin(flow, self._lookup_limits())
        except OSError:
            return Process.kernel()
        if isinstance(found, Lookup):
            return await asyncio.shield(found.future)  # a packet of the flow may wait for it too
        return found

    async def _finish(self, change: Awaitable[T]) -> T:
        """Run a rule change to its end even if its caller goes (a D-Bus call cancelled at
        shutdown): a rule written to the store must also be held, or the two would differ
        without anything telling."""
        task: asyncio.Task[T] = asyncio.ensure_future(change)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(task)

    async def use_profile(self, profile: str | None) -> None:
        """Make `profile` (None: none) the active one: the rules in force are read and indexed
        for it in a worker thread, then swapped in on the loop, between two packets. Held
        prompts stay open: the next flow is decided by the new rules."""
        async with self._changing:
            loaded = await asyncio.to_thread(self._load, self.rules, profile)
            self.profile = profile
            load, _, _ = self._take(loaded)
            self.store.adopt_version(load.version)
        log.info("profile in force profile=%s rules=%d", profile or "-", len(self.rules))

    async def expire_rules(self) -> None:
        """Delete the rules whose time or process is up: the check (which reads /proc for
        per-process rules) and the deletes in a worker thread, then each is taken out."""
        async with self._changing:
            if not self._expirable:
                return
            candidates = list(self._expirable.values())
            gone = await asyncio.to_thread(self._expire, candidates, self.clock())
            for record in gone:
                self._release(record.id)
                log.info("rule expired id=%d: %s", record.id, record.rule)

    def _expire(self, candidates: list[RuleRecord], now: float) -> list[RuleRecord]:
        """In a worker thread. A store that fails (locked) stops the round; the rest are
        tried again at the next sweep."""
        keep = keep_unexpired(now, process_alive)
        gone: list[RuleRecord] = []
        for record in candidates:
            if keep(record):
                continue
            try:
                self.store.delete_rule(record.id)
            except RuleNotFound:
                pass  # deleted meanwhile by someone else: gone all the same
            except StoreError as exc:
                log.warning("rule expiry postponed id=%d: %s", record.id, exc)
                break
            gone.append(record)
        return gone

    def _list_loaded(self, name: str) -> None:
        """A new copy of list `name` was swapped in: the open flows a deny or reject rule
        naming it now covers are cut, as for a rule made stricter (`cut_flows`)."""
        place = list_place(name)
        naming = [(i, r) for i, r in self.rules.snapshot().values() if r.place == place]
        self.news.changed(*(i for i, _ in naming))  # what they match changed
        ids = {i for i, rule in naming if rule.action is not Action.ALLOW and not rule.keep_open}
        self._cut_ids_soon(ids, f"list {name}", because=f"list {name} updated")


def quotas_of(config: Config) -> Quotas:
    """The prompt shares a config gives: held packets at most half the kernel queue, so that
    flows being decided always find room in it."""
    return Quotas(
        config.max_prompts,
        config.max_prompts_total,
        config.max_prompt_packets,
        config.queue_max_len // 2,
    )


def local_time(now: float) -> tuple[int, int]:
    """The machine's local weekday and minute of `now` (time windows: `set_local_time`)."""
    local = time.localtime(now)
    return local.tm_wday, local.tm_hour * 60 + local.tm_min


def _cut_record(result: CutResult, proc: Process, rule_id: int, action: Action) -> CutFlow:
    return CutFlow(result.flow, proc, rule_id, action, result.reset)


def _in_force(rule: Rule, profile: str | None) -> bool:
    """Whether a rule holds while `profile` is active (None: no profile): a rule of no
    profile holds in every one."""
    return rule.profile is None or rule.profile == profile


def _expires(rule: Rule) -> bool:
    return rule.until is not None or rule.lifetime is Lifetime.PROCESS


_Tracking = tuple[dict[int, RuleRecord], dict[str, dict[str, int]]]
_Loaded = tuple[
    RuleLoad,
    RuleSet,
    StricterRules,
    _Tracking,
    set[int],
    set[int],
    dict[int, RuleRecord],
]


def _tracking(records: list[RuleRecord]) -> _Tracking:
    """The rules that may expire, and the hashes each app's rules pin (with how many pin
    each), for a rule set read whole."""
    expirable = {
        r.id: r for r in records if _expires(r.rule) and r.rule.lifetime is not Lifetime.ONCE
    }
    pins: dict[str, dict[str, int]] = {}
    for r in records:
        if r.rule.exe is not None and r.rule.sha256 is not None:
            hashes = pins.setdefault(r.rule.exe, {})
            hashes[r.rule.sha256] = hashes.get(r.rule.sha256, 0) + 1
    return expirable, pins


def _by_id(rules: dict[int, tuple[int, Rule]]) -> list[tuple[int, Rule]]:
    return [rules[rule_id] for rule_id in sorted(rules)]
