"""`snitchctl agent`: answer prompts at a terminal (SSH sessions, headless machines).

It stays the agent through snitchd's restarts (registering again with the new one) and says
when snitchd left.

Shows the same details and choices as the popup, one prompt at a time with a count of those
waiting, and reads one line per answer: an action letter, then optionally a duration, a scope
and, while a profile is active, where the rule holds (`a`, `d forever`, `a 15m host`,
`a forever host profile`). The line is parsed here and sent as-is; the daemon checks it.
"""

import asyncio
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TextIO

from snitch_common.agent import AgentService, register
from snitch_common.answers import (
    ACTION_WORDS,
    DEFAULT_DURATION,
    DEFAULT_SCOPE,
    DURATIONS,
    NO_APP,
    REACHES,
    Answer,
    Reach,
    Scope,
    default_duration,
    left_open,
)
from snitch_common.bus import AGENT_PATH, PromptView
from snitch_common.choices import ScopeOption, duration_why_not, scope_options
from snitch_common.client import Client
from snitch_common.errors import RuleError, SnitchError
from snitch_common.rules import parse_duration

__all__ = ["help_for", "parse_reply", "render", "run_agent"]

_SCOPES = {s.value: s for s in Scope}
_REACHES = {r.value: r for r, _ in REACHES}
HELP = (
    "answer: a(llow) | d(eny) | r(eject)  [{durations}]  [{scopes}]\n"
    f"        defaults: {DEFAULT_DURATION}, {DEFAULT_SCOPE.value} (this host, port and protocol)"
    "   e.g.  a 15m host"
)
# Shown under HELP while a profile is active: where the rule holds.
HELP_PROFILE = (
    f"        [{'|'.join(_REACHES)}]: the rule holds in every profile (default) or only in "
    "profile {}   e.g.  a forever host profile"
)
# Shown under HELP for a connection of no known app (`PromptView.app_known`).
HELP_NO_APP = f"        ({NO_APP}: answer for this destination only)"


def help_for(prompt: PromptView) -> str:
    """HELP with the durations and scopes this prompt can be answered for: those the popup
    greys (`snitch_common.choices`) are left out."""
    durations = [d for d, _ in DURATIONS if duration_why_not(prompt, d) is None]
    scopes = [o.scope.value for o in _scopes(prompt).values() if o.why_not is None]
    text = HELP.format(durations="|".join(durations), scopes="|".join(scopes))
    if not prompt.app_known:
        text += "\n" + HELP_NO_APP
    if prompt.profile:
        text += "\n" + HELP_PROFILE.format(prompt.profile)
    return text


def _scopes(prompt: PromptView) -> dict[Scope, ScopeOption]:
    return {o.scope: o for o in scope_options(prompt, os.path.basename(prompt.exe or "app"))}


def _refusal(prompt: PromptView, answer: Answer) -> str | None:
    """Why snitchd would refuse `answer` for this prompt, as far as the popup can tell."""
    why = _scopes(prompt)[answer.scope].why_not
    if why is not None:
        return f"scope {answer.scope.value!r}: {why}"
    return duration_why_not(prompt, answer.duration)


def parse_reply(prompt_id: int, line: str, duration: str = DEFAULT_DURATION) -> Answer:
    """`a 15m host` → Answer(allow, 15m, host); raises ValueError with what is wrong.
    `duration`: the one a reply that names none gets."""
    words = line.lower().split()
    if not words or words[0] not in ACTION_WORDS:
        raise ValueError("start with a (allow), d (deny) or r (reject)")
    answer = Answer(prompt_id, ACTION_WORDS[words[0]], duration)
    for word in words[1:]:
        if word in _SCOPES:
            answer = replace(answer, scope=_SCOPES[word])
            continue
        if word in _REACHES:
            answer = replace(answer, reach=_REACHES[word])
            continue
        try:
            parse_duration(word)
        except RuleError:
            raise ValueError(f"unknown word {word!r}") from None
        answer = replace(answer, duration=word)
    return answer


def render(prompt: PromptView, waiting: int, now: float) -> str:
    left = max(0, int(prompt.deadline - now))
    lines = [
        "── snitch: a new connection waits for you " + "─" * 20,
        f"  app       {prompt.who}",
        f"  process   pid {prompt.pid}, user {prompt.user or prompt.uid}"
        + (f" (found by {prompt.source})" if prompt.source else ""),
    ]
    if prompt.script is not None:
        lines.append(f"  script    {prompt.script}")
    if prompt.cmdline:
        lines.append(f"  command   {' '.join(prompt.cmdline)[:200]}")
    if prompt.parents:
        lines.append("  parents   " + " ← ".join(f"{e} ({p})" for p, e in prompt.parents[:4]))
    lines.append(
        f"  to        {prompt.destination}" + (f" via {prompt.iface}" if prompt.iface else "")
    )
    if prompt.host is not None and prompt.rule_host != prompt.host:
        lines.append(
            f"            ({prompt.host} was looked up by another program: answers name "
            f"{prompt.dst})"
        )
    if prompt.sha256:
        lines.append(f"  sha256    {prompt.sha256}")
    lines += [f"  WARNING   {note}" for note in prompt.warnings]
    if not prompt.verified and not prompt.container:
        lines.append("            (its path names another file here: rules for it do not apply)")
    if prompt.tampered:
        lines.append("            (code not of its executable runs in it: its allow rules do not)")
    if prompt.profile:
        lines.append(f"  profile   {prompt.profile} (active when asked)")
    lines.append(f"  default   {prompt.default_action} in {left} s")
    if waiting:
        lines.append(f"  ({waiting} more waiting)")
    lines.append(help_for(prompt))
    return "\n".join(lines)


class _TerminalAgent:
    def __init__(self, client: Client, out: TextIO, clock: Callable[[], float]) -> None:
        self.client = client
        self.out = out
        self.clock = clock
        self.queue: list[PromptView] = []
        self.answering: PromptView | None = None  # sent, no reply yet; None once cancelled

    def show(self) -> None:
        if self.queue:
            print(render(self.queue[0], len(self.queue) - 1, self.clock()), file=self.out)
            print("answer> ", end="", file=self.out, flush=True)

    def on_prompt(self, prompt: PromptView) -> None:
        self.queue.append(prompt)
        if len(self.queue) == 1:
            self.show()

    def on_alert(self, alert: dict[str, object]) -> None:
        print(f"\n!! snitch alert ({alert.get('kind')}): {alert.get('message')}", file=self.out)
        self.show()

    def daemon_gone(self) -> None:
        """snitchd left the bus: the prompts it asked are void (their flows got the default
        when it stopped)."""
        void, self.queue = len(self.queue), []
        dropped = f" ({void} prompt{'s' if void != 1 else ''} void)" if void else ""
        print(f"\nsnitchd stopped: waiting for it{dropped}", file=self.out, flush=True)

    def on_cancel(self, prompt_id: int, reason: str) -> None:
        if self.answering is not None and self.answering.id == prompt_id:
            self.answering = None  # ended while its answer was on the way: not shown again
        was_current = bool(self.queue) and self.queue[0].id == prompt_id
        self.queue = [p for p in self.queue if p.id != prompt_id]
        if was_current:
            print(f"\nprompt {prompt_id} closed: {reason}", file=self.out)
            self.show()

    async def on_line(self, line: str) -> None:
        if not self.queue:
            return
        try:
            current = self.queue[0]
            answer = parse_reply(
                current.id, line, default_duration(current.verified, current.tampered)
            )
            if answer.reach is Reach.PROFILE and not current.profile:
                raise ValueError("no profile was active when this was asked: leave out 'profile'")
            refused = _refusal(current, answer)
            if refused is not None:
                raise ValueError(refused)
        except ValueError as exc:
            print(f"{exc}\n{help_for(current)}\nanswer> ", end="", file=self.out, flush=True)
            return
        prompt = self.answering = self.queue.pop(0)
        try:
            rule_id = await self.client.answer_prompt(answer)
        except SnitchError as exc:
            print(f"not answered: {exc.message}", file=self.out)
            if self.answering is prompt and left_open(exc):
                print("(it is still open: answer it again)", file=self.out)
                self.queue.insert(0, prompt)
        else:
            made = f"rule {rule_id}" if rule_id >= 0 else "once, no rule"
            print(f"{answer.action.value} {prompt.destination}: {made}", file=self.out, flush=True)
        finally:
            self.answering = None
        self.show()


async def run_agent(client: Client, out: TextIO = sys.stdout, *, take_over: bool = False) -> int:
    agent = _TerminalAgent(client, out, time.time)
    service = AgentService(agent.on_prompt, agent.on_cancel, agent.on_alert)
    owners: asyncio.Queue[str] = asyncio.Queue()
    await client.watch_daemon(owners.put_nowait)
    uid = await register(client, service, terminal=True, take_over=take_over)
    print(f"snitch agent for uid {uid}: waiting for prompts (Ctrl-C to stop)", file=out, flush=True)
    if not take_over:
        print(
            "prompts come here only while no desktop agent of yours is active "
            "(snitchctl agent --take-over: always; see snitchctl status)",
            file=out,
            flush=True,
        )
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def readable() -> None:
        line = sys.stdin.readline()
        lines.put_nowait(line if line else None)

    loop.add_reader(sys.stdin.fileno(), readable)
    follow = loop.create_task(_follow(agent, service, owners, take_over), name="follow")
    try:
        while (line := await lines.get()) is not None:
            await agent.on_line(line)
    finally:
        follow.cancel()
        loop.remove_reader(sys.stdin.fileno())
    return 0


async def _follow(
    agent: _TerminalAgent, service: AgentService, owners: asyncio.Queue[str], take_over: bool
) -> None:
    """snitchd keeps agents in memory: the agent registers again with each snitchd that
    takes the name, and says when snitchd left (as the desktop agents do, `registration`)."""
    client = agent.client
    while True:
        if not await owners.get():
            agent.daemon_gone()
            continue
        client.bus.unexport(AGENT_PATH)  # register() exports it again
        try:
            uid = await register(client, service, terminal=True, take_over=take_over)
        except SnitchError as exc:
            print(f"snitchd restarted but refused this agent: {exc.message}", file=agent.out)
            continue
        print(f"snitchd restarted: agent for uid {uid} again", file=agent.out, flush=True)
