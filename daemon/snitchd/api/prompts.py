"""The service's agents and prompts: who may register as an agent, what an agent is sent
(`DBusTransport`), and the answers.
"""

import asyncio
import logging
import os
import secrets
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusDouble, DBusInt64, DBusObjectPath, DBusUInt32, DBusUInt64
from dbus_fast.service import dbus_method

from snitch_common.answers import Reach, parse_answer
from snitch_common.bus import AGENT_INTERFACE, call_bus_daemon
from snitch_common.errors import NotAuthorized, PromptError
from snitch_common.rules import Action, Lifetime
from snitchd.access import is_admin
from snitchd.agents import AgentProcess, inspect_agent, session_active, session_of, thread_names
from snitchd.api.base import ServiceBase
from snitchd.api.values import VarDict, VarDicts, arg, variants
from snitchd.caller import Caller, current_caller, handled
from snitchd.events import Alert
from snitchd.polkit import ANSWER_ALLOW_FOREVER, check_authorization
from snitchd.prompts import Agent, Prompt

__all__ = ["DBusTransport", "PromptsRoom", "prompt_dict"]

# One logger for the whole service, as before the split: its lines keep their name.
log = logging.getLogger("snitchd.api")

PROVE_TIMEOUT = 5.0  # an agent answers Prove from its bus loop at once


def prompt_dict(prompt: Prompt, default_action: str) -> dict[str, Variant]:
    """A prompt as agents see it: who asks, where to, and until when."""
    proc, flow = prompt.proc, prompt.flow
    fields: dict[str, Any] = {
        "id": prompt.id,
        "attribution": proc.attribution.value,
        "source": proc.source.value if proc.source is not None else "",
        "exe": proc.exe,
        "pid": proc.pid,
        "uid": proc.uid,
        "user": proc.user,
        "ppid": proc.ppid,
        "sha256": proc.sha256,
        "verified": proc.verified,
        "tampered": proc.tampered,
        "script": proc.script_label,
        "proto": flow.proto.value,
        "dst": str(flow.dst),
        "port": flow.dport,
        "iface": flow.iface,
        "host": prompt.host,
        "rule_host": prompt.named,
        "created": prompt.created,
        "deadline": prompt.deadline,
        "default_action": default_action,
        "profile": prompt.profile or "",
    }
    out = variants(fields)
    out["cmdline"] = Variant("as", list(proc.cmdline))
    out["parents"] = Variant("a(xs)", [[pid, exe] for pid, exe in proc.parents])
    out["notes"] = Variant("as", list(proc.notes()))
    if proc.container is not None:  # issue 16
        out["container"] = Variant("s", proc.notes()[0])
        out["container_name"] = Variant("s", proc.container.name)
        out["runtime"] = Variant("s", proc.container.runtime.value)
    return out


class DBusTransport:
    """Prompts travel to agents as calls of `org.snitch.Agent1` on the agent's object; we do
    not wait for the agent's reply beyond logging a failure (the person answers later, through
    AnswerPrompt)."""

    def __init__(self, bus: MessageBus, default_action: str) -> None:
        self.bus = bus
        self.default_action = default_action
        self._pending: set[asyncio.Task[Message | None]] = set()

    def _call(self, agent: Agent, member: str, signature: str, body: list[Any]) -> None:
        msg = Message(
            destination=agent.name,
            path=agent.path,
            interface=AGENT_INTERFACE,
            member=member,
            signature=signature,
            body=body,
        )

        def done(task: asyncio.Task[Message | None]) -> None:
            self._pending.discard(task)
            err = task.exception()
            reply = None if err else task.result()
            if err is not None or reply is None or reply.message_type is MessageType.ERROR:
                detail = err or (reply.body if reply is not None else "no reply")
                log.warning("agent %s %s failed: %s", agent.name, member, detail)

        task = asyncio.get_running_loop().create_task(self.bus.call(msg), name=f"agent-{member}")
        self._pending.add(task)
        task.add_done_callback(done)

    def send_prompt(self, agent: Agent, prompt: Prompt) -> None:
        self._call(agent, "Prompt", "a{sv}", [prompt_dict(prompt, self.default_action)])

    def send_cancel(self, agent: Agent, prompt: Prompt, reason: str) -> None:
        self._call(agent, "Cancel", "ts", [prompt.id, reason])

    def send_alert(self, agent: Agent, alert: Alert) -> None:
        fields = {
            "kind": alert.kind,
            "message": alert.message,
            "time": alert.time,
            "uid": alert.uid,
            "exe": alert.exe,
        }
        self._call(agent, "Alert", "a{sv}", [variants(fields)])


class PromptsRoom(ServiceBase):
    """Agents (registered only when proven) and the prompts they answer."""

    def _routing(self) -> tuple[str, ...]:
        """Which agent gets whose prompts, one line per agent in routing order: the caller's
        own agents (an admin's: everyone's)."""
        caller = current_caller()
        everyone = is_admin(caller.uid, self.admin_group)
        lines = []
        for uid, agents in self.firewall.broker.routes():
            if uid != caller.uid and not everyone:
                continue
            for i, agent in enumerate(agents):
                lines.append(f"uid {uid}: {'gets the prompts' if i == 0 else f'#{i + 1}'}: "
                             f"{self._describe(agent)}")  # fmt: skip
        return tuple(lines)

    def _describe(self, agent: Agent) -> str:
        kind = "terminal" if agent.terminal else "desktop"
        if agent.take_over:
            kind += ", --take-over"
        where = "no session"
        if agent.session is not None:
            state = (
                self.logind.state(agent.session)
                if self.logind is not None and agent.session.startswith("/")
                else None
            )
            if state is not None:
                where = state.describe()
            else:
                active = "active" if session_active(agent.session) else "not active"
                where = f"session {agent.session} ({active})"
        program = os.path.basename(agent.program) or "?"
        return f"{program} pid {agent.pid} ({kind}; {where}), bus name {agent.name}"

    @dbus_method()
    @handled()
    async def RegisterAgent(self, path: DBusObjectPath) -> DBusUInt32:
        """Register the caller as the agent of its own user; prompts come to `path`. Only an
        installed agent program is accepted (`snitchd.agents`); the user's agents hear of a
        refusal, and of a second agent."""
        return await self._register(path, terminal=False, take_over=False)

    @dbus_method()
    @handled()
    async def RegisterAgentWith(self, path: DBusObjectPath, options: VarDict) -> DBusUInt32:
        """RegisterAgent with options (issue 15): `terminal` (b), a terminal agent, asked only
        when no desktop agent of the user is active; `take_over` (b), a terminal agent asked
        before them all (`snitchctl agent --take-over`)."""
        terminal = bool(arg(options, "terminal", bool))
        return await self._register(path, terminal, bool(arg(options, "take_over", bool)))

    async def _register(self, path: str, terminal: bool, take_over: bool) -> int:
        who = current_caller()
        broker = self.firewall.broker
        if who.uid == 0:  # root can change every file the checks rely on: nothing to check
            pid = await self._pid_of(who.name)
            session = await self._session(pid, 0) if pid is not None else None
            broker.register(who.name, path, who.uid, pid, session, "(root)", terminal, take_over)
            return who.uid
        try:
            found = await self._verify_agent(who, path)
        except NotAuthorized as exc:
            self.agents_refused += 1
            broker.refused(who.uid, f"an agent of uid {who.uid} was refused: {exc.message}")
            raise
        # The terminal agent is snitchctl, whatever it says; the notifier may say it is one.
        terminal = terminal or os.path.basename(found.program) == "snitchctl"
        session = await self._session(found.pid, who.uid)
        broker.register(
            who.name, path, who.uid, found.pid, session, found.program, terminal, take_over
        )
        return who.uid

    async def _pid_of(self, name: str) -> int | None:
        reply = await call_bus_daemon(self.bus, "GetConnectionUnixProcessID", "s", [name])
        if reply.message_type is not MessageType.METHOD_RETURN:
            return None
        return int(reply.body[0])

    async def _session(self, pid: int, uid: int) -> str | None:
        """logind's session of the agent (a path), else the one its cgroup names (an id)."""
        found = await self.logind.session_of(pid, uid) if self.logind is not None else None
        if found is not None:
            return found
        return await asyncio.to_thread(session_of, pid, uid)

    def session_active(self, session: str) -> bool:
        """Whether a person sits at `session` now: logind's word for a session path, the
        state file's for a session id from a cgroup."""
        if session.startswith("/"):
            return self.logind is not None and self.logind.active(session)
        return session_active(session)

    def session_known(self, session: str) -> bool:
        """Whether anything is known of `session` (logind answered for it)."""
        if not session.startswith("/"):
            return True
        return self.logind is not None and self.logind.state(session) is not None

    async def _verify_agent(self, who: Caller, path: str) -> AgentProcess:
        """The process behind the caller's connection, if it runs an agent program and is
        this connection's own (it proves it by naming a thread after a nonce we send)."""
        reply = await call_bus_daemon(self.bus, "GetConnectionUnixProcessID", "s", [who.name])
        if reply.message_type is not MessageType.METHOD_RETURN:
            raise NotAuthorized(f"cannot register as an agent: the bus knows no pid for {who.name}")
        pid = int(reply.body[0])
        launcher = self.firewall.config.agent_launcher
        found = await asyncio.to_thread(inspect_agent, pid, who.uid, launcher)
        nonce = "snt" + secrets.token_hex(6)
        proof = Message(
            destination=who.name,
            path=path,
            interface=AGENT_INTERFACE,
            member="Prove",
            signature="s",
            body=[nonce],
        )
        try:
            answer = await asyncio.wait_for(self.bus.call(proof), PROVE_TIMEOUT)
        except TimeoutError:
            answer = None
        if answer is None or answer.message_type is not MessageType.METHOD_RETURN:
            raise NotAuthorized(
                f"cannot register as an agent: pid {pid} did not answer Prove on {path} "
                "(an agent program older than snitchd? update both)"
            )
        if nonce not in await asyncio.to_thread(thread_names, pid):
            raise NotAuthorized(
                f"cannot register as an agent: the process behind {who.name} is not pid {pid}, "
                "the agent program the bus names (its connection was handed on)"
            )
        again = await asyncio.to_thread(inspect_agent, pid, who.uid, launcher)
        if again.start != found.start:
            raise NotAuthorized(f"cannot register as an agent: pid {pid} changed")
        return found

    @dbus_method()
    @handled()
    async def UnregisterAgent(self) -> None:
        self.firewall.broker.unregister(current_caller().name)

    @dbus_method()
    @handled()
    async def ListPrompts(self) -> VarDicts:
        """The caller's open prompts only: an agent never sees another user's."""
        default = self.firewall.config.default_action.value
        prompts = self.firewall.broker.visible_to(current_caller().name)
        return [prompt_dict(p, default) for p in prompts]

    @dbus_method()
    @handled()
    async def AnswerPrompt(self, prompt_id: DBusUInt64, answer: VarDict) -> DBusInt64:
        """Answer one of the caller's prompts; returns the new rule's id, or -1 for once."""
        parsed = parse_answer(
            prompt_id,
            arg(answer, "action", str) or "",
            arg(answer, "duration", str) or "once",
            arg(answer, "scope", str) or "exact",
            arg(answer, "reach", str) or "everywhere",
        )
        name, broker = current_caller().name, self.firewall.broker
        prompt = broker.prompt_for(parsed, name)
        if parsed.reach is Reach.PROFILE and prompt.profile and self._switcher is not None:
            self._switcher.check_exists(prompt.profile)  # deleted since: its rule holds nowhere
        permanent = parsed.lifetime[0] is Lifetime.FOREVER and parsed.action is Action.ALLOW
        if permanent and self.firewall.config.answers_need_auth:
            # Waits for the person to authenticate; the prompt may end meanwhile (answer()
            # then refuses, as for any prompt that is no longer open).
            try:
                await check_authorization(self.bus, name, ANSWER_ALLOW_FOREVER)
            except NotAuthorized as exc:  # the answer is refused, not the agent: the prompt
                raise PromptError(exc.message) from None  # stays open (`left_open`)
        rule_id = await broker.answer(parsed, name)
        return -1 if rule_id is None else rule_id

    @dbus_method()
    @handled()
    async def DeferPrompt(self, prompt_id: DBusUInt64) -> DBusDouble:
        """Hold one of the caller's prompts up to `prompt_hold_max` after it was asked (the
        person put it aside, or is choosing); returns the seconds left before the default."""
        return self.firewall.broker.defer(prompt_id, current_caller().name)
