"""The packet path in one place: queued packet → Flow → Process → decide → verdict, logged.

`on_packet` runs on the event loop for every new outbound flow. It never blocks and never raises:
any failure on one packet is logged, counted, and that packet gets the fail-mode verdict (accept
when fail_mode is open, drop when closed), and the loop carries on.

The rules it decides by are kept, and changed, by `rulebook.Rulebook`, its base class (which
holds no state: `Firewall.__init__` makes it all); a queue reader process (`snitchd.readers`)
runs this packet path on a copy of them.

A verdict is also kept on the flow's conntrack entry (`connmark`), so the kernel decides the
flow's later packets itself and they never come back (issue 12). Packets of the flow that were
queued before that (a burst sent faster than we decide) still arrive: they get the flow's verdict
as long as they come from the same process or from a socket that is gone (a program that sent a
burst and exited is no longer found, and would otherwise fall to the default), and are not
logged again: the log gets one row per flow and verdict, not one per packet.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from netfilterqueue import Packet

from snitch_common.errors import PacketError
from snitch_common.modes import Mode, ModeState
from snitch_common.recent import Recent
from snitch_common.records import SYSTEM_UID_MAX, Attribution, Flow, Process, Proto, Source
from snitch_common.rules import Action, Rule, RuleRecord
from snitchd.attempts import Attempts, RowRef, attempt_key
from snitchd.config import Config, FailMode, PinAnswers
from snitchd.connmark import ConnMarks
from snitchd.decide import Ask, RuleSet, StricterRules, Verdict, decide
from snitchd.dnswatch import DnsWatch
from snitchd.events import Alert, EventLog
from snitchd.every import Every
from snitchd.fastpath import FastPath, Kept
from snitchd.flowcut import FlowCutter
from snitchd.journal import Event, journal_fields
from snitchd.knownapps import KnownApps
from snitchd.limitdrops import DropWatch
from snitchd.lists import Lists
from snitchd.modes import Modes
from snitchd.netfilter import MARK_MASK, verdict_mark
from snitchd.packet import decode
from snitchd.places import Places
from snitchd.procs import Attributor, Limits, Lookup
from snitchd.prompts import Broker, Quotas
from snitchd.proposals import ProposalBook
from snitchd.readers.handed import Handed
from snitchd.rulebook import Rulebook, RuleMirror
from snitchd.rulenews import RuleNews
from snitchd.socketmatch import NamedSockets, SocketMatch
from snitchd.store import (
    Decision,
    Store,
)

__all__ = [
    "REMEMBERED_FLOWS",
    "UNREADABLE_SAID_EVERY",
    "Counters",
    "Firewall",
    "local_time",
    "quotas_of",
]

log = logging.getLogger(__name__)

# A row is skipped for a packet whose flow got the same verdict, from the same rule, for the same
# process, less than this many seconds before (sliding): the packets queued before the kernel
# took the flow over arrive within milliseconds, or all at once when a prompt ends; 30 s is
# nf_conntrack_udp_timeout, the life of a one-way UDP flow the kernel could not keep.
_REPEAT_SECONDS = 30.0
REMEMBERED_FLOWS = 4096  # flows remembered for that; the oldest go first
# A packet of a flow whose verdict the kernel keeps was queued before the mark was set: such
# packets drain in well under a second at the queue's rate. Short, because a TCP entry may end
# 10 s after a reset (nf_conntrack_tcp_timeout_close), and a new connection on the same ports
# is a new flow to decide.
_IN_FLIGHT_SECONDS = 5.0
# A TCP SYN comes to the queue whatever its conntrack entry says (`netfilter._decided_lines`),
# so a connect's retransmitted SYNs (1, 3, 7 … 63 s after the first with tcp_syn_retries 6)
# come back: the same process's keep the first one's verdict this long, without a prompt.
_SYN_RETRY_SECONDS = 130.0
_NF_INET_FORWARD = 2  # the netfilter hook a forwarded packet was queued in


@dataclass(frozen=True, slots=True)
class _Kept:
    """A verdict the kernel keeps for a flow, and for whom it was given."""

    verdict: Verdict
    proc: Process
    host: str | None
    at: float


UNREADABLE_SAID_EVERY = 60.0  # seconds between warnings of unreadable packets dropped


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
    fast: int = 0  # connects the kernel passed by a rule's earlier allow (`fastpath`)
    started: float = field(default_factory=time.time)


class Firewall(Rulebook):
    """The packet path (this module's docstring), over the rules the `Rulebook` keeps."""

    counters: Counters

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
        # How a datagram's verdict is kept: "per socket (…)" or "per tuple: why" (`socketmatch`),
        # and where each verdict's socket is named for it (None: per tuple).
        self.sockets = ""
        self.named: NamedSockets | None = None
        self.socket_match: SocketMatch | None = None  # the main process's, for its counters
        self.limit_drops: DropWatch | None = None  # the kernel's rate limits' counters (main's)
        self._named_failed = Every(UNREADABLE_SAID_EVERY)
        self.events = events
        self.broker = broker
        self.clock = clock
        self.marks = marks
        self.counters = Counters()
        self._logged: Recent[tuple[object, ...], float] = Recent(REMEMBERED_FLOWS)
        self._kept: Recent[Flow, _Kept] = Recent(REMEMBERED_FLOWS)
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
        self.known_apps = KnownApps(store.known_apps())
        self._pinned: dict[str, frozenset[str]] = {}
        self._pins: dict[str, dict[str, int]] = {}  # exe -> sha256 -> rules pinning it
        self._expirable: dict[int, RuleRecord] = {}
        self._changed_seen: set[tuple[str, str | None]] = set()
        self._doubted: Recent[tuple[str, str], None] = Recent(REMEMBERED_FLOWS)  # (exe, kind)
        self._ifnames: dict[int, str] = {}
        self._unreadable_said = Every(UNREADABLE_SAID_EVERY)  # when `_unreadable` says so
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
        # Where rule changes are copied (the queue reader processes, `snitchd.readers`); None
        # when this process reads the queue itself.
        self.mirror: RuleMirror | None = None
        # The kernel's own verdicts for connects a rule allowed before (`fastpath`); None when
        # the recorder is not loaded here, or `fast_path` is off.
        self.fast: FastPath | None = None
        self.fast_path = "off: the socket match is off"  # for status: "on", or "off: why"
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
        self._end_kept()  # how processes are described may have changed

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
        except PacketError as exc:
            self._unreadable(pkt, exc)
            return
        except Exception:
            self._fail(pkt)
            return
        try:
            if pkt.hook == _NF_INET_FORWARD:  # a container's or guest's flow (issue 16)
                self.counters.forwarded += 1
                found = self.attributor.begin_forwarded(
                    flow, pkt.indev, self._lookup_limits(), pkt.get_hw() or b""
                )
            else:
                found = self.attributor.begin(flow, self._lookup_limits(), noted=True)
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

    def _unreadable(self, pkt: Packet, why: PacketError) -> None:
        """A packet whose headers cannot be read is dropped, whatever the fail mode: the fail
        mode is for snitchd failing, and a packet can be built to be unreadable (a user may
        put an IPv6 routing header of 2 KiB before the ports; given the fail mode's accept,
        a connection denied by a rule went out unseen). Said at most once a minute: one
        line per packet would let a user flood the journal."""
        self.counters.errors += 1
        self.counters.dropped += 1
        try:
            pkt.drop()
        except Exception:
            log.exception("cannot drop an unreadable packet")
        said = self._unreadable_said
        if said.due(time.monotonic()):
            quiet, said.quiet = said.quiet, 0
            log.warning(
                "dropped %d outbound packet(s) snitchd cannot read, the last: %s",
                quiet + 1,
                why.message,
            )

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
            if self.fast is not None:
                # Before the verdict: the connect may be over, and its record gone, after it.
                self._keep_fast(self.fast, pkt, flow, proc, outcome, lookup)
            self.apply(pkt, outcome, flow, proc, now, host)
        else:
            named = self.dns.own_name(flow.dst, proc, now) if host is not None else None
            self.handed_over(pkt, flow, proc, now, host, named)

    def _keep_fast(
        self,
        fast: FastPath,
        pkt: Packet,
        flow: Flow,
        proc: Process,
        verdict: Verdict,
        lookup: Lookup | None,
    ) -> None:
        """Let the kernel pass this process's next connects to this destination by the same
        rule, when nothing but the process and the destination decided it (`fastpath`)."""
        recorder = self.attributor.recorder
        if (
            recorder is None
            or verdict.action is not Action.ALLOW
            or verdict.rule_id is None
            or (lookup is not None and (lookup.late or lookup.hash_late or lookup.note))
            or pkt.hook == _NF_INET_FORWARD
            or flow.proto is not Proto.TCP
            or proc.source is not Source.BPF
            or not proc.verified
            or proc.tampered
            or proc.container is not None
            or self.rules.varying
        ):
            return
        pinned = self._pinned.get(proc.exe) if proc.exe is not None else None
        if pinned and proc.sha256 not in pinned:
            return
        found = recorder.connected_key(flow)
        if found is None or found[0] != proc.pid:
            return
        if not fast.keep(found[1], Kept(proc, verdict)) and not fast.broken:
            self.counters.errors += 1

    def on_fast(self) -> None:
        """Log the connects the kernel passed (`fastpath`), each as a decision of its rule
        (`fastpath.DRAIN_MAX` events a call at most: the loop reads packets in between)."""
        fast = self.fast
        if fast is None:
            return
        now = self.clock()
        for kept, flow in fast.drain():
            self.counters.seen += 1
            self.counters.accepted += 1
            self.counters.fast += 1
            _names, host = self.dns.names_for(flow.dst, kept.proc, now)
            self._log(kept.verdict, flow, kept.proc, now, host)

    def handed_over(
        self,
        pkt: Packet,
        flow: Flow,
        proc: Process,
        now: float,
        host: str | None,
        named: str | None,
    ) -> None:
        """A flow no rule covers, of this process's own queue or handed over by a queue reader
        (`snitchd.readers`): a retry of an attempt blocked without a rule (answered once, timed
        out, no agent) gets that verdict again and no new prompt (`attempts`); else the mode or
        a person decides."""
        tried = self.attempts.recall(attempt_key(flow, proc), now)
        if tried is not None and tried.rule_id is None:
            self.apply(pkt, Verdict(tried.action, None, tried.reason), flow, proc, now, host)
        else:
            self._uncovered(pkt, flow, proc, now, host, named)

    def log_verdict(self, verdict: Verdict, flow: Flow, proc: Process, host: str | None) -> None:
        """A verdict a queue reader gave: its row (or one more repeat or retry). Timed by this
        process's clock, not the reader's: two readers' messages may arrive out of their
        order, and a repeat is one whose time follows its row's."""
        self._log(verdict, flow, proc, self.clock(), host)

    def app_seen(self, proc: Process, flow: Flow, host: str | None, now: float) -> None:
        """A queue reader saw an executable it did not know: news if this process did not."""
        if proc.exe is not None and proc.exe not in self.known_apps:
            self._new_app(proc, flow, host, now)

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

    def on_dns_packet(self, pkt: Packet) -> None:
        """A DNS query leaving or an answer arriving: `dnswatch` records, judges, learns; the
        packet always passes."""
        self.dns.on_packet(pkt)

    def _new_app(self, proc: Process, flow: Flow, host: str | None, now: float) -> None:
        assert proc.exe is not None
        if not self.known_apps.add(proc.exe, proc.uid):
            return
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
        self._doubted.put(key, None)
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
        log never delays the packet; the verdict comes first, so nothing after it can lose it).
        A packet a queue reader handed over (`Handed`) goes back to that reader, which does
        all three."""
        if isinstance(pkt, Handed):
            pkt.apply(verdict, flow, proc, host)
            return
        self._give(pkt, verdict, flow, proc)
        if self._keep(flow, verdict.action):
            self._kept.put(flow, _Kept(verdict, proc, host, now))
        self._log(verdict, flow, proc, now, host)

    def _give(self, pkt: Packet, verdict: Verdict, flow: Flow, proc: Process) -> None:
        action = verdict.action
        # A forwarded packet has no socket here: the socket match never checks its repeat.
        if self.named is not None and pkt.hook != _NF_INET_FORWARD:
            try:
                self.named.name(flow, proc.uid)
            except OSError as exc:
                # The repeat could meet what was written for another socket on this tuple:
                # this one datagram is dropped rather than passed on another's verdict.
                if self._named_failed.due(time.monotonic()):
                    log.warning("datagram dropped, its socket not named: %s", exc)
                pkt.drop()
                return
        # Through our hook again with the verdict's mark, where our rules act on it
        # (`netfilter`): an allow is kept on the conntrack entry there (no ctnetlink update per
        # flow), a deny dropped, a reject sent on to the reject rule; and the socket match
        # learns that this packet's socket was decided (`socketmatch`).
        pkt.set_mark((pkt.get_mark() & ~MARK_MASK) | verdict_mark(action))
        pkt.repeat()
        if action is Action.ALLOW:
            self.counters.accepted += 1
        elif action is Action.DENY:
            self.counters.dropped += 1
        else:
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
        """Keep the verdict on the flow's conntrack entry. An allow is kept by the kernel, in
        the verdict's own step (see `_give`); a dropped or rejected packet left no entry, so it
        is created (see `connmark`). A failure costs only speed: the flow is queued again."""
        if action is Action.ALLOW:
            return True
        if self.marks is None:
            return False
        try:
            return self.marks.mark(flow, verdict_mark(action), MARK_MASK)
        except OSError as exc:
            self.counters.unmarked += 1
            if log.isEnabledFor(logging.DEBUG):
                log.debug("verdict not kept in conntrack for %s: %s", flow, exc.strerror)
            return False

    def _in_flight(self, flow: Flow, proc: Process, now: float) -> _Kept | None:
        """The kept verdict of `flow` if this packet was queued before the kernel took the flow
        over (see `_IN_FLIGHT_SECONDS`) and nobody else sent it: the same process, or a socket
        that is gone (no socket: the sender exited; its uid only: its process is gone), or a
        retransmitted SYN of the same process (`_SYN_RETRY_SECONDS`). Another process on the
        same ports is decided afresh: it never borrows someone's verdict."""
        kept = self._kept.get(flow)
        if kept is None or now < kept.at:
            return None
        if now - kept.at < _IN_FLIGHT_SECONDS and (
            proc == kept.proc
            or proc.attribution is Attribution.KERNEL
            or (proc.attribution is Attribution.UID_ONLY and proc.uid == kept.proc.uid)
        ):
            return kept
        if flow.proto is Proto.TCP and now - kept.at < _SYN_RETRY_SECONDS and proc == kept.proc:
            return kept  # its connect's retransmitted SYN
        return None

    def _repeat(self, key: tuple[object, ...], now: float) -> bool:
        """Whether a row for `key` was written less than `_REPEAT_SECONDS` ago; remembers now."""
        last = self._logged.put(key, now)
        return last is not None and 0 <= now - last < _REPEAT_SECONDS

    def default_verdict(self, reason: str) -> Verdict:
        return Verdict(self.config.default_action, None, reason)

    def _forget_in_flight(self, flow: Flow) -> None:
        """A cut flow's next packet is decided afresh, never as one in flight (`_in_flight`),
        by whichever reader gets it."""
        if self.mirror is not None:
            self.mirror.forget(flow)
        ends = (flow.proto, flow.src, flow.sport, flow.dst, flow.dport)
        for kept in [k for k in self._kept if (k.proto, k.src, k.sport, k.dst, k.dport) == ends]:
            del self._kept[kept]


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
