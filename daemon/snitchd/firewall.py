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
import dataclasses
import gc
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import TypeVar

from netfilterqueue import Packet

from snitch_common.errors import RuleNotFound, StoreError
from snitch_common.records import Attribution, Flow, Process, Proto
from snitch_common.rules import Action, Lifetime, Rule, RuleRecord
from snitchd.config import Config, FailMode, PinAnswers
from snitchd.connmark import ConnMarks
from snitchd.decide import Ask, Explanation, RuleSet, Verdict, decide
from snitchd.dnswatch import DnsWatch
from snitchd.events import Alert, EventLog
from snitchd.netfilter import MARK_MASK, REJECT_MARK, verdict_mark
from snitchd.packet import decode
from snitchd.procs import Attributor, Limits, Lookup, process_alive
from snitchd.prompts import Broker, Quotas
from snitchd.store import Decision, RuleLoad, Store, UnparsableRule, keep_unexpired

__all__ = ["Counters", "Firewall", "quotas_of"]

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
    unmarked: int = 0  # verdicts the kernel could not keep: those flows come back to the queue
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
        self.rules = RuleSet()
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
        self._blocking: tuple[object, dict[bool, RuleSet]] = (None, {})
        self._entries: tuple[object, list[tuple[int, Rule]]] = (None, [])
        self.rules_error = ""  # why the held rules are not the store's (status), "" if they are
        self.reload_rules()

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.broker.reconfigure(
            config.prompt_timeout,
            config.max_prompts,
            quotas_of(config),
            pin_root=config.pin_answers is PinAnswers.ALWAYS,
        )
        self.dns.reconfigure(config)

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
                loaded = await asyncio.to_thread(self._load, self.rules)
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
            load, rules, (expirable, pins), added, removed = loaded
            self.rules, self._expirable, self._pins = rules, expirable, pins
            gc.freeze()  # long-lived, as at start (main): out of the collector's full passes
            self._pinned = {exe: frozenset(hashes) for exe, hashes in pins.items()}
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

    def _load(self, held: RuleSet) -> tuple[RuleLoad, RuleSet, _Tracking, set[int], set[int]]:
        """In a worker thread: the store's rules, indexed and tracked, and which ids differ
        from `held`."""
        before = held.snapshot()
        load = self.store.load_rules()
        rules = RuleSet((r.id, r.rule) for r in load.records)
        added: set[int] = set()
        for r in load.records:
            old = before.pop(r.id, None)
            if old is None or (old[1] is not r.rule and old[1] != r.rule):
                added.add(r.id)
        # A for=once rule is never held, so it is no news either.
        added = {i for i in added if i in rules}
        return load, rules, _tracking(load.records), added, set(before)

    def reload_rules(self) -> None:
        """Read every rule and index them, on the calling thread: at start, before the loop
        runs packets (afterwards, `check_outside_change` does it in a worker thread)."""
        load = self.store.load_rules()
        self.rules = RuleSet((r.id, r.rule) for r in load.records)
        self._expirable, self._pins = _tracking(load.records)
        self._pinned = {exe: frozenset(hashes) for exe, hashes in self._pins.items()}
        self.store.adopt_version(load.version)
        log.debug("rules loaded count=%d", len(self.rules))

    def _hold(self, record: RuleRecord) -> None:
        """Put one rule in the held set (on the loop, between packets)."""
        self._release(record.id)
        rule = record.rule
        self.rules.add((record.id, rule))
        if record.id not in self.rules:
            return  # for=once: never held
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
        entry = self.rules.remove(rule_id)
        if entry is None:
            return
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
        if isinstance(outcome, Verdict):
            self.apply(pkt, outcome, flow, proc, now, host)
        else:
            self.broker.ask(pkt, flow, proc, now, host)

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
        blocking = self._blocking_rules(strip_exe=lookup.late)
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
            hit = self._blocking_rules(strip_exe=False).match(flow, other, names, now)
            if hit is not None:
                rule_id, rule = hit
                return Verdict(rule.action, rule_id, f"rule {rule_id} ({why}, pin or no pin)")
        if isinstance(outcome, Verdict):
            return Verdict(outcome.action, outcome.rule_id, f"{outcome.reason} ({why})")
        return outcome

    def _rules_key(self) -> tuple[RuleSet, int]:
        """Names the rule set as it is now: caches built from it compare this."""
        return (self.rules, self.rules.version)

    async def rule_entries(self) -> list[tuple[int, Rule]]:
        """The rules held, by id, as one list made once per rule change: a slice of it is a
        consistent page for `ListRules`. Sorted in a worker: at 100k rules, sorting on the loop
        stalled it ~100 ms (bench/disturb.py)."""
        source, entries = self._entries
        key = self._rules_key()
        if source != key:
            snapshot = self.rules.snapshot()
            entries = await asyncio.to_thread(_by_id, snapshot)
            self._entries = (key, entries)
        return entries

    def _blocking_rules(self, *, strip_exe: bool) -> RuleSet:
        """The rules that deny or reject and name an app or a parent (`strip_exe`: any app, any
        parent; else those pinning a digest, with their pin left out), built once per rule
        change, when a lookup first runs late."""
        source, sets = self._blocking
        if source != self._rules_key():
            sets = {}
            self._blocking = (self._rules_key(), sets)
        found = sets.get(strip_exe)
        if found is None:
            entries = [
                (
                    rule_id,
                    dataclasses.replace(
                        rule, exe=None, sha256=None, script=None, parent=None, parent1=None
                    )
                    if strip_exe
                    else dataclasses.replace(rule, sha256=None),
                )
                for rule_id, rule in self.rules.snapshot().values()
                if rule.action is not Action.ALLOW
                and (
                    (strip_exe and (rule.exe or rule.parent or rule.parent1))
                    or (rule.exe is not None and rule.sha256 is not None)
                )
            ]
            found = sets[strip_exe] = RuleSet(entries)
        return found

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
        log.warning("alert %s: %s", alert.kind, alert.message)
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
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "verdict %s %s from %s: %s", action.value, flow, proc.describe(), verdict.reason
            )

    def _log(
        self, verdict: Verdict, flow: Flow, proc: Process, now: float, host: str | None
    ) -> None:
        if self._repeat((flow, verdict.action, verdict.rule_id, proc.pid, proc.uid, proc.exe), now):
            self.counters.repeats += 1
            return
        reason = verdict.reason
        if notes := proc.notes():  # unverified, script, preloaded, traced (issue 14)
            reason = f"{reason} [{'; '.join(notes)}]"
        self.events.record(Decision(now, flow, proc, verdict.action, verdict.rule_id, reason, host))

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

        async def change() -> RuleRecord:
            async with self._changing:
                record = await asyncio.to_thread(self.store.add_rule, rule, self.clock(), origin)
                self._hold(record)
            log.info("rule added id=%d origin=%s: %s", record.id, origin, record.rule)
            return record

        return await self._finish(change())

    async def delete_rule(self, rule_id: int, origin: str) -> RuleRecord:
        """Delete the rule from the store (in a worker thread), then stop holding it. Raises
        RuleNotFound or StoreError."""

        async def change() -> RuleRecord:
            async with self._changing:
                record = await asyncio.to_thread(self.store.delete_rule, rule_id)
                self._release(rule_id)
            log.info("rule deleted id=%d origin=%s: %s", rule_id, origin, record.rule)
            return record

        return await self._finish(change())

    async def _finish(self, change: Awaitable[T]) -> T:
        """Run a rule change to its end even if its caller goes (a D-Bus call cancelled at
        shutdown): a rule written to the store must also be held, or the two would differ
        without anything telling."""
        task: asyncio.Task[T] = asyncio.ensure_future(change)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(task)

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

    def explain(
        self,
        exe: str | None,
        dst: str,
        port: int,
        proto: Proto,
        iface: str = "",
        uid: int | None = None,
    ) -> Explanation:
        flow = Flow(proto, ip_address("0.0.0.0"), 0, ip_address(dst), port, iface)
        if flow.dst.version == 6:
            flow = Flow(proto, ip_address("::"), 0, flow.dst, port, iface)
        proc = Process(Attribution.PROCESS, exe=exe, uid=uid)
        return self.rules.explain(flow, proc, frozenset(), self.clock())


def quotas_of(config: Config) -> Quotas:
    """The prompt shares a config gives: held packets at most half the kernel queue, so that
    flows being decided always find room in it."""
    return Quotas(
        config.max_prompts,
        config.max_prompts_total,
        config.max_prompt_packets,
        config.queue_max_len // 2,
    )


def _expires(rule: Rule) -> bool:
    return rule.until is not None or rule.lifetime is Lifetime.PROCESS


_Tracking = tuple[dict[int, RuleRecord], dict[str, dict[str, int]]]


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
