"""The prompt broker: flows that no rule covers wait here for a person, or get the default.

The queue reader hands a packet over and returns at once; the kernel keeps the packet until we
give its verdict by id, so nothing here ever blocks the loop or waits for a person (OpenSnitch
blocks an RPC thread per prompt; we keep a record and a timer). Packets of the same app to the
same destination join the open prompt and all get its answer: one popup, not a storm. A prompt
goes to an agent of the user who owns the socket — for root and system users, to an agent of an
admin — and only that agent may answer it. No agent, too many prompts, or no answer in time: the
default action applies, and the log says which. Time comes from the injected clock.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from netfilterqueue import Packet

from snitch_common.answers import Answer, rule_for_answer
from snitch_common.errors import NotAuthorized
from snitch_common.records import Flow, Process
from snitch_common.rules import Lifetime, Rule
from snitchd.decide import Verdict
from snitchd.events import Alert

__all__ = ["SYSTEM_UID_MAX", "Agent", "Applier", "Broker", "Prompt", "Transport"]

log = logging.getLogger(__name__)

SYSTEM_UID_MAX = 999


@dataclass(frozen=True, slots=True)
class Agent:
    """A registered agent: a connection on the bus that speaks for one user."""

    name: str
    path: str
    uid: int
    admin: bool


@dataclass(slots=True)
class Prompt:
    id: int
    key: tuple[object, ...]
    flow: Flow
    proc: Process
    created: float
    deadline: float
    host: str | None = None
    agent: Agent | None = None
    packets: list[Packet] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


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
    def add_answer_rule(self, rule: Rule, origin: str) -> int: ...


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
    ) -> None:
        self._clock = clock
        self._pin_root = pin_root
        self._timeout = timeout
        self._max_open = max_open
        self._is_admin = is_admin
        self._ids = itertools.count(1)
        self._firewall: Applier | None = None
        self.transport: Transport | None = None
        self.agents: dict[str, Agent] = {}
        self.open: dict[int, Prompt] = {}
        self._by_key: dict[tuple[object, ...], Prompt] = {}
        self.asked = 0
        self.timed_out = 0

    def reconfigure(self, timeout: float, max_open: int, pin_root: bool = True) -> None:
        """New limits apply to prompts opened from now on; open ones keep their deadline.
        `pin_root`: answers pin root-owned executables' digests too (config `pin_answers`)."""
        self._timeout = timeout
        self._max_open = max_open
        self._pin_root = pin_root

    def attach(self, firewall: Applier) -> None:
        self._firewall = firewall

    # -- agents -------------------------------------------------------------------------------
    def register(self, name: str, path: str, uid: int) -> Agent:
        agent = Agent(name, path, uid, self._is_admin(uid))
        self.agents[name] = agent
        log.info("agent registered name=%s uid=%d admin=%s", name, uid, agent.admin)
        return agent

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
        """The user's own agent; for root, system users and unattributed flows, an admin's."""
        uid = proc.uid
        if uid is not None and uid > SYSTEM_UID_MAX:
            own = [a for a in self.agents.values() if a.uid == uid]
            if own:
                return own[-1]
        admins = [a for a in self.agents.values() if a.admin]
        return admins[-1] if admins else None

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
        self, pkt: Packet, flow: Flow, proc: Process, now: float, host: str | None = None
    ) -> None:
        # Who asks is the whole identity: two scripts of one interpreter, or an impostor and
        # the app whose path it shows, never share one prompt (and one answer).
        who = (proc.exe, proc.script_label, proc.verified, proc.tampered) if proc.exe else proc.uid
        key = (who, flow.proto, flow.dst, flow.dport)
        prompt = self._by_key.get(key)
        if prompt is not None:
            prompt.packets.append(pkt)
            return
        if len(self.open) >= self._max_open:
            log.warning("too many open prompts (%d): default action for %s", len(self.open), flow)
            self._fw.apply(
                pkt, self._fw.default_verdict("default: too many prompts"), flow, proc, now
            )
            return
        agent = self._route(proc)
        if agent is None:
            self._fw.apply(
                pkt, self._fw.default_verdict("default: no agent"), flow, proc, now, host
            )
            return
        prompt = Prompt(
            next(self._ids), key, flow, proc, now, now + self._timeout, host=host, agent=agent
        )
        prompt.packets.append(pkt)
        self.open[prompt.id] = prompt
        self._by_key[key] = prompt
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

    def visible_to(self, name: str) -> list[Prompt]:
        agent = self.agents.get(name)
        return [p for p in self.open.values() if agent is not None and p.agent == agent]

    def answer(self, answer: Answer, name: str) -> int | None:
        """Apply an agent's answer; returns the id of the rule it made (None for once)."""
        prompt_id = answer.prompt_id
        prompt = self.open.get(prompt_id)
        agent = self.agents.get(name)
        if prompt is None or agent is None or prompt.agent != agent:
            # The same message whether it does not exist or is someone else's: an agent
            # learns nothing about other users' prompts.
            raise NotAuthorized(f"no open prompt {prompt_id} for this agent")
        rule_id = None
        if answer.lifetime[0] is not Lifetime.ONCE:
            rule = rule_for_answer(
                prompt.flow,
                prompt.proc,
                prompt.host,
                answer,
                admin=agent.admin,
                pin_root=self._pin_root,
            )
            rule_id = self._fw.add_answer_rule(rule, f"prompt by uid {agent.uid}")
            reason = f"rule {rule_id} (answered)"
        else:
            reason = "answered once"
        self._finish(prompt, Verdict(answer.action, rule_id, reason), notify=False)
        return rule_id

    def _finish(self, prompt: Prompt, verdict: Verdict, notify: bool = True) -> None:
        self.open.pop(prompt.id, None)
        self._by_key.pop(prompt.key, None)
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

    def release_all(self, reason: str) -> None:
        """At shutdown: every held packet gets the default verdict. Agents are not told: the
        daemon's bus name vanishing says it for every prompt at once."""
        for prompt in list(self.open.values()):
            self._finish(prompt, self._fw.default_verdict(reason), notify=False)
