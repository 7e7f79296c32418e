"""The DNS queue: queries seen leaving, answers believed or not, names learnt for their owner.

Both directions come through one queue (`dns_queue`), told apart by the netfilter hook. A query
(POSTROUTING: it passed every filter and leaves) is recorded with its socket's owner, found by
the attributor as for a new flow. An answer (INPUT) is believed only if

  (a) it comes from one of the system's resolvers (`resolvers`), and
  (b) it replies to a query this machine sent: the kernel queues as "asked" only answers of
      ESTABLISHED conntrack flows in the reply direction, and `dnsasked` matches the DNS id and
      question against the queries recorded (the first answer uses the query up).

A believed answer's names are learnt for the query's owner (`names.Owner`): the process, or its
user when the process is not known yet in time, or everyone when a system service asked. The
answer is held in the kernel until then, so no program connects before its names are known; a
lookup still under way holds it too (at most `_HELD_PER_UID` per user, then it is learnt for the
user). Any other answer is read for the journal only ("claimed by 203.0.113.66"), never named an
address, and counted; one nobody asked for also raises a `dns-spoofed` alert (rate-limited).
Every DNS packet is let through, whatever happens here: the DNS queue decides nothing.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from netfilterqueue import Packet

from snitch_common.errors import PacketError
from snitch_common.records import SYSTEM_UID_MAX, Attribution, Flow, IPAddress, Process
from snitchd.config import Config
from snitchd.dnsasked import Asked, QueryKey, QueryLog
from snitchd.dnssnoop import DnsMessage, DnsPacket, read_dns_packet
from snitchd.events import Alert
from snitchd.every import Every
from snitchd.ipwire import read_ip
from snitchd.names import SHARED, NameCache, Owner
from snitchd.netfilter import MARK_MASK, UNASKED_MARK
from snitchd.procs import Attributor, Limits, Lookup
from snitchd.resolvers import Resolvers

__all__ = ["DnsCounters", "DnsWatch"]

log = logging.getLogger(__name__)

_LOCAL_IN, _POST_ROUTING = 1, 4  # NF_INET_* hooks, as NetfilterQueue's `Packet.hook` gives them
_HELD_PER_UID = 64  # answers of one user held for an attribution still under way
_ALERT_EVERY = 60.0  # seconds between two dns-spoofed alerts
_CLAIM_EVERY = 10.0  # seconds between two journal lines about answers not believed


class _Nobody(enum.Enum):
    """The query's socket was gone (or never found): its answer is learnt for nobody."""

    NOBODY = "nobody"


@dataclass(slots=True)
class DnsCounters:
    """What `snitchctl status` shows about DNS since start (answers count DNS messages)."""

    answers: int = 0  # believed: from a resolver, to a query of ours
    skipped: int = 0  # malformed or not DNS
    unasked: int = 0  # replying to no query this machine sent (spoofed, or very late)
    untrusted: int = 0  # replying to our query, from a server that is not a resolver
    duplicates: int = 0  # a second answer to a query already answered: not learnt again
    unowned: int = 0  # believed, but the asking socket was gone: learnt for nobody
    queries: int = 0  # queries seen leaving


class DnsWatch:
    def __init__(
        self,
        config: Config,
        attributor: Attributor,
        alert: Callable[[Alert], None],
        clock: Callable[[], float],
        limits: Callable[[], Limits],
    ) -> None:
        self.names = NameCache(grace=config.dns_grace, max_bytes=config.dns_cache_bytes)
        self.resolvers = Resolvers(config.dns_resolvers, config.resolv_conf)
        self.asked = QueryLog()
        self.counters = DnsCounters()
        self._attributor = attributor
        self._alert = alert
        self._clock = clock
        self._limits = limits
        self._held: dict[int, int] = {}
        self._alerts = Every(_ALERT_EVERY)
        self._claims = Every(_CLAIM_EVERY)

    def reconfigure(self, config: Config) -> None:
        self.names.configure(config.dns_grace, config.dns_cache_bytes)
        self.resolvers.configure(config.dns_resolvers, config.resolv_conf)

    # -- the packet path ------------------------------------------------------------------------
    def names_for(
        self, address: IPAddress, proc: Process, now: float
    ) -> tuple[frozenset[str], str | None]:
        """The names `proc`'s flow to `address` may carry, and the one to show."""
        names = self.names.names(address, now, proc)
        return names, (self.names.best(address, now, proc) if names else None)

    def own_name(self, address: IPAddress, proc: Process, now: float) -> str | None:
        """The name `proc` itself resolved `address` from, None if it did not (`NameCache.own`):
        the only name an answer to its prompt may make a host or domain rule of."""
        return self.names.own(address, now, proc)

    def on_packet(self, pkt: Packet) -> None:
        """A DNS packet either way: record or judge it; it always passes (perhaps later)."""
        held = False
        try:
            if pkt.hook == _POST_ROUTING:
                self._query(read_dns_packet(pkt.get_payload(), answer=False))
            else:
                unasked = (pkt.get_mark() & MARK_MASK) == UNASKED_MARK
                payload = pkt.get_payload()
                # Records are read only where they may be learnt: an answer the kernel saw no
                # query for, or from a server the machine does not use, is judged by its
                # question alone (reading hostile records held the loop ~230 ms a packet).
                worth = not unasked and self.resolvers.trusts(read_ip(payload).src)
                held = self._answer(pkt, read_dns_packet(payload, addresses=worth), unasked, worth)
        except PacketError as exc:
            self.counters.skipped += 1
            if log.isEnabledFor(logging.DEBUG):
                log.debug("dns packet skipped: %s", exc)
        except Exception:
            self.counters.skipped += 1
            log.exception("dns packet handling failed")
        finally:
            if not held:
                _let_through(pkt)

    def _query(self, packet: DnsPacket) -> None:
        if not packet.messages:
            return
        flow = Flow(packet.proto, packet.src, packet.sport, packet.dst, packet.dport)
        owner: object
        try:
            owner = self._attributor.begin(flow, self._limits())
        except OSError:
            owner = None
        uid = owner.uid if isinstance(owner, Lookup | Process) else None
        if uid is None:
            uid = -1
        now = self._clock()
        for message in packet.messages:
            if message.question is None:
                continue
            key = QueryKey(
                packet.proto, packet.src, packet.sport, packet.dst, packet.dport, message.id
            )
            self.asked.record(key, Asked(message.question, owner, uid, now))
            self.counters.queries += 1

    def _answer(self, pkt: Packet, packet: DnsPacket, unasked: bool, trusted: bool) -> bool:
        """Judge each message; True if the packet is held for an attribution under way.
        `trusted`: asked by the kernel and from a resolver (`on_packet` looked; an unasked
        answer's messages are all judged unasked, whoever sent it)."""
        now = self._clock()
        believed: list[tuple[DnsMessage, Asked]] = []
        for message in packet.messages:
            asked = None
            if not unasked:
                key = QueryKey(
                    packet.proto, packet.dst, packet.dport, packet.src, packet.sport, message.id
                )
                asked = self.asked.take(key, message.question, now)
            if asked is None:
                self._unasked(packet, message, now, by_kernel=unasked)
            elif asked.answered:
                self.counters.duplicates += 1
            elif not trusted:
                self.counters.untrusted += 1
                self._claimed(packet, message, now, "not one of the system's resolvers")
            else:
                believed.append((message, asked))
        pending = [
            a.owner
            for _, a in believed
            if isinstance(a.owner, Lookup) and not a.owner.future.done()
        ]
        if not pending:
            self._learn(believed)
            return False
        uid = pending[0].uid
        if self._held.get(uid, 0) >= _HELD_PER_UID:
            self._learn(believed)  # the lookups under way count as uid-only
            return False
        self._held[uid] = self._held.get(uid, 0) + 1

        def resume(_: object) -> None:
            left = self._held.get(uid, 1) - 1
            if left > 0:
                self._held[uid] = left
            else:
                self._held.pop(uid, None)
            try:
                self._learn(believed)
            except Exception:
                log.exception("dns answer handling failed")
            finally:
                _let_through(pkt)

        asyncio.gather(*(p.future for p in pending)).add_done_callback(resume)
        return True

    def _learn(self, believed: list[tuple[DnsMessage, Asked]]) -> None:
        now = self._clock()
        for message, asked in believed:
            self.counters.answers += 1
            owner = _owner(asked)
            if owner is _Nobody.NOBODY:
                self.counters.unowned += 1
                continue
            self.names.learn(message.resolutions, now, owner)
            asker = _asker(asked)
            if owner is SHARED and asker is not None:
                # A system user's process that asked itself: its names are everyone's, and also
                # its own (`own_name`: what its host answers may name).
                self.names.learn(message.resolutions, now, asker)

    def _unasked(self, packet: DnsPacket, message: DnsMessage, now: float, by_kernel: bool) -> None:
        self.counters.unasked += 1
        why = "no query went out to it" if by_kernel else "it matches no query of ours"
        self._claimed(packet, message, now, f"nobody asked: {why}")
        if self._alerts.due(now):
            quiet, self._alerts.quiet = self._alerts.quiet, 0
            more = f"; {quiet} more since the last alert" if quiet else ""
            self._alert(
                Alert(
                    "dns-spoofed",
                    f"a DNS answer nobody on this machine asked for, from {packet.src} port "
                    f"{packet.sport} to port {packet.dport}: {_claims(message)} (not believed: "
                    f"it names no address{more}; see snitchctl status)",
                    now,
                )
            )

    def _claimed(self, packet: DnsPacket, message: DnsMessage, now: float, why: str) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("dns answer not believed: %s claimed by %s (%s)", _claims(message),
                      packet.src, why)  # fmt: skip
        elif self._claims.due(now):
            quiet, self._claims.quiet = self._claims.quiet, 0
            log.info(
                "dns answer not believed: %s claimed by %s (%s)%s",
                _claims(message),
                packet.src,
                why,
                f"; {quiet} more not shown" if quiet else "",
            )


def _asker(asked: Asked) -> Owner | None:
    """The very process that asked, if it was found in time."""
    found = asked.owner
    if isinstance(found, Lookup):
        found = found.future.result() if found.future.done() else None
    if (
        not isinstance(found, Process)
        or found.attribution is not Attribution.PROCESS
        or found.uid is None
        or found.pid is None
    ):
        return None
    return Owner(found.uid, found.pid)


def _owner(asked: Asked) -> Owner | _Nobody | None:
    """For whom the names of an answer to `asked` are learnt (`SHARED`: everyone)."""
    found = asked.owner
    if isinstance(found, Lookup):
        found = found.future.result() if found.future.done() else Process.uid_only(found.uid)
    if not isinstance(found, Process) or found.uid is None:
        return _Nobody.NOBODY
    if found.uid <= SYSTEM_UID_MAX:
        return SHARED
    if found.attribution is Attribution.PROCESS and found.pid is not None:
        return Owner(found.uid, found.pid)
    return Owner(found.uid)


def _claims(message: DnsMessage) -> str:
    """What an answer says, briefly: "evil.example.org → 203.0.113.66" (three at most), or
    what it answers when its records were not read (an answer the kernel saw no query for, or
    from a server the machine does not use: `read_dns_packet`), "an answer for evil.example.org"."""
    said = [f"{r.names[0]} → {r.address}" for r in message.resolutions[:3]]
    if len(message.resolutions) > 3:
        said.append(f"and {len(message.resolutions) - 3} more")
    if said:
        return ", ".join(said)
    return f"an answer for {message.question.name}" if message.question else "an answer"


def _let_through(pkt: Packet) -> None:
    """Accept, without the mark the kernel rules put on an unasked answer."""
    try:
        mark = pkt.get_mark()
        if mark & MARK_MASK:
            pkt.set_mark(mark & ~MARK_MASK & 0xFFFFFFFF)
        pkt.accept()
    except Exception:
        log.exception("cannot let a dns packet through")
