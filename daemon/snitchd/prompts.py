"""The prompt broker: flows that no rule covers wait here for a person, or get the default.

The queue reader hands a packet over and returns at once; the kernel keeps the packet until we
give its verdict by id, so nothing here ever blocks the loop or waits for a person (OpenSnitch
blocks an RPC thread per prompt; we keep a record and a timer). Packets of the same app to the
same destination join the open prompt and all get its answer: one popup, not a storm. A prompt
goes to an agent of the user who owns the socket — for root and system users, to an agent of an
admin — and only that agent may answer it. No agent, too many prompts, or no answer in time: the
default action applies, and the log says which. Time comes from the injected clock.

A user has several agents (a notifier per session, `snitchctl agent` over SSH): their prompts go
to the one in the active graphical session, else to the oldest — never simply to the newest,
which is what malware that registers would be. When another agent of a user registers, or one is
refused (snitchd/agents.py), every agent of that user is told.

Fair shares (issue 13): a user has at most `Quotas.per_uid` prompts open, everyone together
`Quotas.total`; a prompt holds at most `Quotas.packets` packets and all prompts `Quotas.held`
(half the kernel queue), a user's joined packets at most a quarter of that: the packets past
those are dropped and counted, so a flood joining one prompt never fills the kernel's queue, and
a user whose agent never answers uses up only their own share, never root's or another user's.

Deferral (issue 15): the person may put a prompt aside (the notifier's waiting list) or be in
the middle of choosing; the agent it was sent to then calls `defer`, and its flow stays held up
to `hold_max` seconds after it was asked, then gets the default. A prompt that timed out is
kept a while (`_EXPIRED_KEPT`) so that its agent can still turn it into a rule: the answer
makes the rule, the flow itself was decided by the default.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from netfilterqueue import Packet

from snitch_common.answers import Answer, rule_for_answer
from snitch_common.errors import NotAuthorized, RuleError
from snitch_common.records import SYSTEM_UID_MAX, Flow, Process
from snitch_common.rules import Lifetime, Rule, RuleRecord
from snitchd.decide import Verdict
from snitchd.events import Alert
from snitchd.every import Every
from snitchd.journal import Event, journal_fields

__all__ = ["Agent", "Applier", "Broker", "Prompt", "Quotas", "Transport"]

log = logging.getLogger(__name__)

_EXPIRED_KEPT = 256  # timed-out prompts an agent can still turn into a rule (all users)
_REFUSED_EVERY = 60.0  # seconds between two agent-refused alerts of one user
_REFUSED_UIDS = 256  # users whose last agent-refused alert is remembered


@dataclass(frozen=True, slots=True)
class Agent:
    """A registered agent: a connection on the bus that speaks for one user."""

    name: str
    path: str
    uid: int
    admin: bool
    seq: int = 0  # registration order: the oldest agent of a user is asked first
    pid: int | None = None
    session: str | None = None  # logind session (path, or id from the cgroup), if any
    program: str = ""
    terminal: bool = False  # `snitchctl agent`: asked only when no desktop agent is active
    take_over: bool = False  # started with --take-over: asked before the desktop's agents


@dataclass(frozen=True, slots=True)
class Quotas:
    """How much of the prompt machinery one user, and everyone, may hold (see module doc)."""

    per_uid: int = 64
    total: int = 1024
    packets: int = 64
    held: int = 2048


@dataclass(slots=True)
class Prompt:
    id: int
    key: tuple[object, ...]
    flow: Flow
    proc: Process
    created: float
    deadline: float
    host: str | None = None  # the name shown and logged (`DnsWatch.names_for`)
    agent: Agent | None = None
    packets: list[Packet] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None
    # The name host and domain answers name: one this process itself resolved the address
    # from (issue 15); None: they name the address (a name another program looked up would
    # stop matching when it expires, or label another program's flows).
    named: str | None = None
    # The profile active when it was asked (issue 17): the one a "this profile only" answer
    # names, as its agent showed it (a switch before the answer does not change it).
    profile: str | None = None


class Applier(Protocol):
    def apply(
        self,
        pkt: Packet,
        verdict: Verdict,
        flow: Flow,
        proc: Process,
        now: float,
        host: str | None = None,
    ) -> None: ...
    def default_verdict(self, reason: str) -> Verdict: ...
    async def add_rule(self, rule: Rule, origin: str) -> RuleRecord: ...


class Transport(Protocol):
    """How prompts reach agents (D-Bus in the daemon, a list in unit tests)."""

    def send_prompt(self, agent: Agent, prompt: Prompt) -> None: ...
    def send_cancel(self, agent: Agent, prompt: Prompt, reason: str) -> None: ...
    def send_alert(self, agent: Agent, alert: Alert) -> None: ...


class Broker:
    def __init__(
        self,
        clock: Callable[[], float],
        timeout: float,
        max_open: int,
        is_admin: Callable[[int], bool],
        pin_root: bool = True,
        quotas: Quotas | None = None,
        session_active: Callable[[str], bool] = lambda session: False,
        hold_max: float = 600.0,
    ) -> None:
        """`max_open`: prompts open per uid (`Quotas.per_uid`); `session_active`: whether a
        logind session is the active graphical one (reads /run: agents.session_active);
        `hold_max`: how long after it was asked a deferred prompt's flow may stay held."""
        self._clock = clock
        self._hold_max = hold_max
        self.expired: dict[int, Prompt] = {}  # timed out, still answerable as a rule
        self._pin_root = pin_root
        self._timeout = timeout
        self._quotas = dataclasses.replace(quotas or Quotas(), per_uid=max_open)
        self._is_admin = is_admin
        self._session_active = session_active
        self._session_known: Callable[[str], bool] = lambda session: True
        self._seq = itertools.count(1)
        self._open_by_uid: dict[int | None, int] = {}
        self._held_by_uid: dict[int | None, int] = {}
        self.held = 0  # packets held by all prompts
        self.over_quota = 0  # flows that got the default because a share was used up
        self.packets_dropped = 0  # packets that joined a prompt past its share
        self._ids = itertools.count(1)
        self._answering: set[int] = set()  # prompts whose answer's rule is being written
        self._refusals: dict[int, Every] = {}  # per uid: when its last refusal was told
        self._firewall: Applier | None = None
        self.transport: Transport | None = None
        self.agents: dict[str, Agent] = {}
        self.open: dict[int, Prompt] = {}
        self._by_key: dict[tuple[object, ...], Prompt] = {}
        self.asked = 0
        self.timed_out = 0

    def reconfigure(
        self,
        timeout: float,
        max_open: int,
        quotas: Quotas | None = None,
        pin_root: bool = True,
        hold_max: float | None = None,
    ) -> None:
        """New limits apply to prompts opened from now on; open ones keep their deadline.
        `pin_root`: answers pin root-owned executables' digests too (config `pin_answers`)."""
        self._timeout = timeout
        if hold_max is not None:
            self._hold_max = hold_max
        self._quotas = dataclasses.replace(quotas or self._quotas, per_uid=max_open)
        self._pin_root = pin_root

    @property
    def quotas(self) -> Quotas:
        return self._quotas

    def attach(self, firewall: Applier) -> None:
        self._firewall = firewall

    # -- agents -------------------------------------------------------------------------------
    def register(
        self,
        name: str,
        path: str,
        uid: int,
        pid: int | None = None,
        session: str | None = None,
        program: str = "",
        terminal: bool = False,
        take_over: bool = False,
    ) -> Agent:
        """Add a verified agent; the user's other agents hear of it (malware that got past the
        checks still cannot take a user's prompts silently)."""
        others = [a for a in self.agents.values() if a.uid == uid and a.name != name]
        agent = Agent(
            name,
            path,
            uid,
            self._is_admin(uid),
            next(self._seq),
            pid,
            session,
            program,
            terminal,
            take_over,
        )
        self.agents[name] = agent
        log.info(
            "agent registered name=%s uid=%d pid=%s session=%s admin=%s program=%s terminal=%s "
            "take_over=%s", name, uid, pid, session, agent.admin, program or "-", terminal,
            take_over,
        )  # fmt: skip
        taking = " with --take-over: it takes your prompts" if take_over else ""
        if others:
            self._tell(
                others,
                Alert(
                    "agent-registered",
                    f"another agent registered for uid {uid}: pid {pid} ({program or 'unknown'})"
                    f", bus name {name}{taking}; {len(others) + 1} agents now. If you did not "
                    "start it, "
                    "stop it and check what runs as you",
                    self._clock(),
                    uid,
                    program or None,
                ),
            )
        return agent

    def refused(self, uid: int, message: str) -> None:
        """An agent of `uid` was refused: that user's agents hear of it (it is malware, or a
        notifier started in a way snitchd cannot trust). Once a minute per user at most, with
        how many were kept quiet: a user calling RegisterAgent in a loop made a journal line
        and an alert per call (10k in 8 s), and journald's rate limit then drops all of
        snitchd's lines, every other user's alerts too."""
        now = self._clock()
        every = self._refusals.get(uid)
        if every is None:
            if len(self._refusals) >= _REFUSED_UIDS:
                self._refusals = {
                    u: e for u, e in self._refusals.items() if now - e.last < _REFUSED_EVERY
                }
            every = self._refusals[uid] = Every(_REFUSED_EVERY)
        if not every.due(now):
            return
        quiet, every.quiet = every.quiet, 0
        if quiet:
            message += f" ({quiet} more refused since the last alert)"
        agents = [a for a in self.agents.values() if a.uid == uid]
        self._tell(agents, Alert("agent-refused", message, now, uid))

    def _tell(self, agents: list[Agent], alert: Alert) -> None:
        log.warning(
            "alert %s: %s", alert.kind, alert.message,
            extra=journal_fields(Event.ALERT, kind=alert.kind, exe=alert.exe, uid=alert.uid),
        )  # fmt: skip
        if self.transport is not None:
            for agent in agents:
                self.transport.send_alert(agent, alert)

    def unregister(self, name: str) -> None:
        agent = self.agents.pop(name, None)
        if agent is None:
            return
        log.info("agent gone name=%s uid=%d", name, agent.uid)
        for prompt in [p for p in self.open.values() if p.agent == agent]:
            prompt.agent = self._route(prompt.proc)
            if prompt.agent is None:
                self._finish(prompt, self._fw.default_verdict("default: agent left"))
            elif self.transport is not None:
                self.transport.send_prompt(prompt.agent, prompt)

    def _route(self, proc: Process) -> Agent | None:
        """The user's own agent; for root, system users and unattributed flows, an admin's. A
        container's flow is its owner's (a rootless one's user; a system one's: the admins)."""
        uid = proc.owner_uid
        if uid is not None and uid > SYSTEM_UID_MAX:
            own = [a for a in self.agents.values() if a.uid == uid]
            if own:
                return self._pick(own)
        admins = [a for a in self.agents.values() if a.admin]
        return self._pick(admins) if admins else None

    def _pick(self, agents: list[Agent]) -> Agent:
        """The first of `agents` in routing order (`_order`)."""
        return min(agents, key=self._order)

    def _order(self, agent: Agent) -> tuple[int, int]:
        """Where an agent stands for its user's prompts, smaller first (issue 15): a terminal
        agent started with --take-over; a desktop agent in the session a person sits at (logind:
        Active, with a seat); one in no session logind knows (nothing tells it is not used);
        a terminal agent; a desktop agent in a session no one sits at now. Within each, the
        oldest: not the newest, which is whoever registered last (malware can always be)."""
        session = agent.session
        if agent.terminal:
            rank = 0 if agent.take_over else 3
        elif session is not None and self._session_active(session):
            rank = 1
        elif session is None or not self._session_known(session):
            rank = 2
        else:
            rank = 4
        return (rank, agent.seq)

    def use_sessions(
        self, active: Callable[[str], bool], known: Callable[[str], bool] | None = None
    ) -> None:
        """How sessions are judged from now on (`logind.Logind` once snitchd is on the bus):
        `active` whether a person sits at it, `known` whether anything is known of it."""
        self._session_active = active
        self._session_known = known or (lambda session: True)

    def routes(self) -> list[tuple[int, list[Agent]]]:
        """Each user's agents in the order their prompts go to them (for `snitchctl status`);
        the first gets the prompts."""
        by_uid: dict[int, list[Agent]] = {}
        for agent in self.agents.values():
            by_uid.setdefault(agent.uid, []).append(agent)
        return [(uid, sorted(agents, key=self._order)) for uid, agents in sorted(by_uid.items())]

    @property
    def _fw(self) -> Applier:
        assert self._firewall is not None, "broker used before attach()"
        return self._firewall

    # -- prompts ------------------------------------------------------------------------------
    def alert(self, alert: Alert) -> None:
        """An alert goes to every agent of its user, or of the admins for system flows."""
        if self.transport is None:
            return
        uid = alert.uid
        personal = uid is not None and uid > SYSTEM_UID_MAX
        for agent in list(self.agents.values()):
            if (agent.uid == uid) if personal else agent.admin:
                self.transport.send_alert(agent, alert)

    def ask(
        self,
        pkt: Packet,
        flow: Flow,
        proc: Process,
        now: float,
        host: str | None = None,
        named: str | None = None,
        profile: str | None = None,
    ) -> None:
        # Who asks is the whole identity: two scripts of one interpreter, or an impostor and
        # the app whose path it shows, never share one prompt (and one answer).
        # The uid is part of it too: two users' copies of one app are two prompts, each for its
        # own user's agent (one user never answers for another's flow).
        who: tuple[object, ...] | None = (
            (proc.exe, proc.script_label, proc.verified, proc.tampered) if proc.exe else None
        )
        if proc.container is not None:  # two containers running one image ask apart
            who = (proc.container.runtime, proc.container.name, proc.exe)
        key = (who, proc.uid, flow.proto, flow.dst, flow.dport)
        prompt = self._by_key.get(key)
        uid, q = proc.uid, self._quotas
        if prompt is not None:
            held = self._held_by_uid.get(uid, 0)
            if len(prompt.packets) >= q.packets or self.held >= q.held or held >= q.held // 4:
                # Past the share: the packet goes (a retransmit or a datagram of a flow that
                # waits anyway); holding it would let one flow fill the kernel's queue.
                self.packets_dropped += 1
                try:
                    pkt.drop()
                except Exception:
                    log.exception("cannot drop a packet past its prompt's share")
                return
            prompt.packets.append(pkt)
            self._held_by_uid[uid] = held + 1
            self.held += 1
            return
        why = None
        if self._open_by_uid.get(uid, 0) >= q.per_uid:
            why = f"default: too many prompts of uid {uid}"
        elif len(self.open) >= q.total or self.held >= q.held:
            why = "default: too many prompts"
        if why is not None:
            self.over_quota += 1
            if self.over_quota & (self.over_quota - 1) == 0:  # 1, 2, 4, 8…: no log flood
                log.warning("%s (%d open, %d held): default action for %s", why,
                            len(self.open), self.held, flow)  # fmt: skip
            self._fw.apply(pkt, self._fw.default_verdict(why), flow, proc, now, host)
            return
        agent = self._route(proc)
        if agent is None:
            self._fw.apply(
                pkt, self._fw.default_verdict("default: no agent"), flow, proc, now, host
            )
            return
        prompt = Prompt(
            next(self._ids),
            key,
            flow,
            proc,
            now,
            now + self._timeout,
            host=host,
            agent=agent,
            named=named,
            profile=profile,
        )
        prompt.packets.append(pkt)
        self.open[prompt.id] = prompt
        self._by_key[key] = prompt
        self._open_by_uid[uid] = self._open_by_uid.get(uid, 0) + 1
        self._held_by_uid[uid] = self._held_by_uid.get(uid, 0) + 1
        self.held += 1
        self.asked += 1
        loop = asyncio.get_running_loop()
        prompt.timer = loop.call_later(self._timeout, self._expire, prompt.id)
        if self.transport is not None:
            self.transport.send_prompt(agent, prompt)

    def _expire(self, prompt_id: int) -> None:
        prompt = self.open.get(prompt_id)
        if prompt is not None:
            self.timed_out += 1
            self._finish(prompt, self._fw.default_verdict("default: timed out"))
            self.expired[prompt.id] = prompt
            prompt.packets = []
            if len(self.expired) > _EXPIRED_KEPT:
                del self.expired[next(iter(self.expired))]

    def defer(self, prompt_id: int, name: str) -> float:
        """The agent `name` puts its prompt aside, or its person is choosing: hold the flow
        up to `hold_max` after it was asked (never shorter than it already was). Returns the
        seconds left before the default applies."""
        prompt = self.open.get(prompt_id)
        agent = self.agents.get(name)
        if prompt is None or agent is None or prompt.agent != agent:
            raise NotAuthorized(f"no open prompt {prompt_id} for this agent")
        now = self._clock()
        deadline = prompt.created + self._hold_max
        if deadline > prompt.deadline:
            prompt.deadline = deadline
            if prompt.timer is not None:
                prompt.timer.cancel()
            loop = asyncio.get_running_loop()
            prompt.timer = loop.call_later(max(0.0, deadline - now), self._expire, prompt.id)
            log.info("prompt deferred id=%d uid=%s until=+%.0fs", prompt.id, prompt.proc.uid,
                     deadline - now)  # fmt: skip
        return max(0.0, prompt.deadline - now)

    def visible_to(self, name: str) -> list[Prompt]:
        agent = self.agents.get(name)
        return [p for p in self.open.values() if agent is not None and p.agent == agent]

    def prompt_for(self, answer: Answer, name: str) -> Prompt:
        """The open prompt `answer` is for, if the agent `name` was asked it; or one that timed
        out, to be turned into a rule."""
        prompt = self.open.get(answer.prompt_id) or self.expired.get(answer.prompt_id)
        agent = self.agents.get(name)
        if prompt is None or agent is None or prompt.agent != agent:
            # The same message whether it does not exist or is someone else's: an agent
            # learns nothing about other users' prompts.
            raise NotAuthorized(f"no open prompt {answer.prompt_id} for this agent")
        return prompt

    async def answer(self, answer: Answer, name: str) -> int | None:
        """Apply an agent's answer; returns the id of the rule it made (None for once).

        The rule is written through the firewall's own rule path: the store write runs in a
        worker, so a locked store delays this answer only, never the packet loop (issue 12).
        Meanwhile the prompt stays open; if it times out first, the rule still stands for the
        flows to come. A second answer to a prompt being answered is refused."""
        prompt = self.prompt_for(answer, name)
        late = prompt.id not in self.open
        if late and answer.lifetime[0] is Lifetime.ONCE:
            raise RuleError(
                f"prompt {prompt.id} timed out: its connection got the default already "
                "(choose how long a rule should last instead of once)"
            )
        if prompt.id in self._answering:
            raise NotAuthorized(f"prompt {prompt.id} is being answered already")
        agent = self.agents[name]
        rule_id = None
        if answer.lifetime[0] is not Lifetime.ONCE:
            rule = rule_for_answer(
                prompt.flow,
                prompt.proc,
                prompt.named,
                answer,
                admin=agent.admin,
                pin_root=self._pin_root,
                profile=prompt.profile,
            )
            self._answering.add(prompt.id)
            try:
                record = await self._fw.add_rule(rule, f"prompt by uid {agent.uid}")
            finally:
                self._answering.discard(prompt.id)
            rule_id = record.id
            reason = f"rule {rule_id} (answered)"
        else:
            reason = "answered once"
        if late:
            self.expired.pop(prompt.id, None)
            log.info("expired prompt=%d turned into rule=%s", prompt.id, rule_id)
            return rule_id
        self._finish(prompt, Verdict(answer.action, rule_id, reason), notify=False)
        return rule_id

    def _finish(self, prompt: Prompt, verdict: Verdict, notify: bool = True) -> None:
        if self.open.pop(prompt.id, None) is None:
            return
        self._by_key.pop(prompt.key, None)
        uid = prompt.proc.uid
        _less(self._open_by_uid, uid, 1)
        _less(self._held_by_uid, uid, len(prompt.packets))
        self.held -= len(prompt.packets)
        if prompt.timer is not None:
            prompt.timer.cancel()
        now = self._clock()
        for pkt in prompt.packets:
            try:
                self._fw.apply(pkt, verdict, prompt.flow, prompt.proc, now, prompt.host)
            except Exception:
                log.exception("verdict for a held packet failed prompt=%d", prompt.id)
        if notify and prompt.agent is not None and self.transport is not None:
            self.transport.send_cancel(prompt.agent, prompt, verdict.reason)

    def settle_open(self, verdict_for: Callable[[Prompt], Verdict | None]) -> int:
        """End every open prompt that `verdict_for` decides (None: leave it open) with that
        verdict now, telling its agent: a mode change settles the flows it holds at once
        (issue 17). Returns how many were settled."""
        settled = 0
        for prompt in list(self.open.values()):
            verdict = verdict_for(prompt)
            if verdict is not None:
                self._finish(prompt, verdict)
                settled += 1
        return settled

    def release_all(self, reason: str) -> None:
        """At shutdown: every held packet gets the default verdict. Agents are not told: the
        daemon's bus name vanishing says it for every prompt at once."""
        for prompt in list(self.open.values()):
            self._finish(prompt, self._fw.default_verdict(reason), notify=False)


def _less(counts: dict[int | None, int], uid: int | None, n: int) -> None:
    left = counts.get(uid, 0) - n
    if left > 0:
        counts[uid] = left
    else:
        counts.pop(uid, None)
