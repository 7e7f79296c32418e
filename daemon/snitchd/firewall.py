"""The packet path in one place: queued packet → Flow → Process → decide → verdict, logged.

`on_packet` runs on the event loop for every new outbound flow. It never blocks and never raises:
any failure on one packet is logged, counted, and that packet gets the fail-mode verdict (accept
when fail_mode is open, drop when closed), and the loop carries on. Rule changes rebuild the
`RuleSet` whole and swap it in, so a lookup never sees half an update; the next new flow already
sees a rule added a moment ago.

A verdict is also kept on the flow's conntrack entry (`connmark`), so the kernel decides the
flow's later packets itself and they never come back (issue 12). Packets of the flow that were
queued before that (a burst sent faster than we decide) still arrive: they get the flow's verdict
as long as they come from the same process or from a socket that is gone (a program that sent a
burst and exited is no longer found, and would otherwise fall to the default), and are not
logged again: the log gets one row per flow and verdict, not one per packet.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_address

from netfilterqueue import Packet

from snitch_common.errors import PacketError
from snitch_common.records import Attribution, Flow, Process, Proto
from snitch_common.rules import Action, Lifetime, Rule, RuleRecord
from snitchd.config import Config
from snitchd.connmark import ConnMarks
from snitchd.decide import Explanation, RuleSet, Verdict, decide
from snitchd.dnssnoop import NameCache, parse_dns_packet
from snitchd.events import Alert, EventLog
from snitchd.netfilter import MARK_MASK, REJECT_MARK, verdict_mark
from snitchd.packet import decode
from snitchd.procs import Attributor, process_alive
from snitchd.prompts import Broker
from snitchd.store import Decision, Store, keep_unexpired

__all__ = ["Counters", "Firewall"]

log = logging.getLogger(__name__)

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
    dns_answers: int = 0
    dns_skipped: int = 0
    repeats: int = 0  # packets of a flow already logged with the same verdict: no new row
    unmarked: int = 0  # verdicts the kernel could not keep: those flows come back to the queue
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
        self.names = NameCache(grace=config.dns_grace)
        self.known_apps: dict[str, str | None] = store.known_apps()
        self._pinned: dict[str, frozenset[str]] = {}
        self._rule_texts: list[tuple[int, Rule]] = []
        self._expirable: list[RuleRecord] = []
        self._changed_seen: set[tuple[str, str | None]] = set()
        self._ifnames: dict[int, str] = {}
        self.reload_rules()

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.broker.reconfigure(config.prompt_timeout, config.max_prompts)

    def check_outside_change(self, now: float) -> None:
        """Another process wrote the store. If the rules differ from what we hold, someone
        changed them without snitch (sqlite3 by hand, or malware): alert, then follow the
        store, which stays the one source of truth."""
        before = {(r, str(rule)) for r, rule in self._rule_texts}
        self.reload_rules()
        after = {(r, str(rule)) for r, rule in self._rule_texts}
        if before != after:
            added = len(after - before)
            removed = len(before - after)
            self.alert(
                Alert(
                    "rules-changed",
                    f"rules were changed outside snitch: {added} added or changed, "
                    f"{removed} removed (see: snitchctl list-rules)",
                    now,
                )
            )

    def reload_rules(self) -> None:
        """Runs on the loop, as does every packet: no lookup sees the rules while they are
        rebuilt, so the old set goes first and the two are never held at once (at 100k rules
        RSS stayed ~40 MB higher after each reload otherwise)."""
        self.rules = RuleSet()
        self._rule_texts = []
        records = self.store.rules()
        self._expirable = [
            r for r in records if r.rule.until is not None or r.rule.lifetime is Lifetime.PROCESS
        ]
        self._rule_texts = [(r.id, r.rule) for r in records]
        self.rules = RuleSet(self._rule_texts)
        pinned: dict[str, set[str]] = {}
        for r in records:
            if r.rule.exe is not None and r.rule.sha256 is not None:
                pinned.setdefault(r.rule.exe, set()).add(r.rule.sha256)
        self._pinned = {exe: frozenset(hashes) for exe, hashes in pinned.items()}
        log.debug("rules loaded count=%d", len(self.rules))

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
        self.counters.seen += 1
        try:
            flow = decode(pkt.get_payload(), self._ifname(pkt.outdev))
            proc = self.attributor.lookup(flow)
            now = self.clock()
            kept = self._in_flight(flow, proc, now)
            if kept is not None:
                self._give(pkt, kept.verdict, flow, proc)
                self._log(kept.verdict, flow, kept.proc, now, kept.host)
                return
            names = self.names.names(flow.dst, now)
            host = self.names.best(flow.dst, now) if names else None
            if proc.exe is not None and proc.exe not in self.known_apps:
                self._new_app(proc, flow, host, now)
            pinned = self._pinned.get(proc.exe) if proc.exe is not None else None
            if pinned and proc.sha256 not in pinned:
                self._exe_changed(proc, pinned, now)
            outcome = decide(flow, proc, self.rules, now, names)
            if isinstance(outcome, Verdict):
                self.apply(pkt, outcome, flow, proc, now, host)
            else:
                self.broker.ask(pkt, flow, proc, now, host)
        except Exception:
            self.counters.errors += 1
            log.exception(
                "packet handling failed; fail-mode verdict fail_mode=%s", self.config.fail_mode
            )
            try:
                if self.config.fail_mode == "open":
                    pkt.accept()
                else:
                    pkt.drop()
            except Exception:
                log.exception("cannot give the fail-mode verdict")

    def on_dns_packet(self, pkt: Packet) -> None:
        """A DNS answer on its way in: learn its names, and always let it pass."""
        try:
            self.names.learn(parse_dns_packet(pkt.get_payload()), self.clock())
            self.counters.dns_answers += 1
        except PacketError as exc:
            self.counters.dns_skipped += 1
            if log.isEnabledFor(logging.DEBUG):
                log.debug("dns answer skipped: %s", exc)
        except Exception:
            self.counters.dns_skipped += 1
            log.exception("dns answer handling failed")
        finally:
            pkt.accept()

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
        self.alert(
            Alert(
                "exe-changed",
                f"{proc.exe} changed: sha256 {proc.sha256} is not the one its rules pin "
                f"({', '.join(sorted(pinned))}); those rules no longer match it",
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
        self.events.record(
            Decision(now, flow, proc, verdict.action.value, verdict.rule_id, verdict.reason, host)
        )

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

    def add_rule(self, rule: Rule, origin: str) -> RuleRecord:
        record = self.store.add_rule(rule, self.clock(), origin)
        self.reload_rules()
        log.info("rule added id=%d origin=%s: %s", record.id, origin, record.rule)
        return record

    def add_answer_rule(self, rule: Rule, origin: str) -> int:
        return self.add_rule(rule, origin).id

    def delete_rule(self, rule_id: int, origin: str) -> RuleRecord:
        record = self.store.delete_rule(rule_id)
        self.reload_rules()
        log.info("rule deleted id=%d origin=%s: %s", rule_id, origin, record.rule)
        return record

    def expire_rules(self) -> None:
        keep = keep_unexpired(self.clock(), process_alive)
        gone = [r for r in self._expirable if not keep(r)]
        for record in gone:
            self.store.delete_rule(record.id)
        if gone:
            self.reload_rules()
            for record in gone:
                log.info("rule expired id=%d: %s", record.id, record.rule)

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
