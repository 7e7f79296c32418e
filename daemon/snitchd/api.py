"""The D-Bus service `org.snitch.Firewall1` on the system bus: a translator, not a decider.

Each method has one shape (`caller.handled`): check the caller, turn D-Bus values into records,
call the firewall, turn the result (or a `SnitchError`) back into D-Bus values. The policy file
in `systemd/` is the first gate; the daemon checks again by the caller's uid (root or the admin
group may change rules), because a policy file can be edited or missing. Rules travel as their
text form, records as `a{sv}` so fields can be added without breaking clients.

Any user may read the log (their own flows) and the rules, in amounts they choose: those reads
run in worker threads (`queries`), never on the packet loop, one at a time per caller, and a
reply holds at most MAX_LOG_ROWS / MAX_RULES_PAGE / MAX_TOP_APPS records (clients page).
"""

import asyncio
import dataclasses
import json
import logging
import os
import secrets
import sqlite3
import time
from typing import Annotated, Any, TypeVar

from dbus_fast import BusType, DBusError, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import (
    DBusDouble,
    DBusInt64,
    DBusObjectPath,
    DBusSignature,
    DBusStr,
    DBusUInt32,
    DBusUInt64,
)
from dbus_fast.service import ServiceInterface, dbus_method, dbus_signal

from snitch_common.answers import Reach, parse_answer
from snitch_common.blocklists import ListFormat
from snitch_common.bus import (
    AGENT_INTERFACE,
    BUS_NAME,
    INTERFACE,
    MAX_LOG_ROWS,
    MAX_RULES_PAGE,
    MAX_TOP_APPS,
    OBJECT_PATH,
    call_bus_daemon,
)
from snitch_common.errors import (
    ListError,
    ModeError,
    NotAuthorized,
    ProfileError,
    RuleError,
    SnitchError,
)
from snitch_common.modes import MAX_FOR_SECONDS, ModeState, parse_mode
from snitch_common.records import Proto, Runtime
from snitch_common.rulefile import read_rules
from snitch_common.rules import Action, Lifetime, Rule, RuleRecord, parse_rule
from snitchd.access import is_admin
from snitchd.agents import AgentProcess, inspect_agent, session_active, session_of, thread_names
from snitchd.caller import Caller, CallerAwareBus, current_caller, handled, sender
from snitchd.decide import PRECEDENCE
from snitchd.events import Alert
from snitchd.explain import Explained, ExplainQuery, explain_flow
from snitchd.firewall import Firewall
from snitchd.lists import ListView
from snitchd.logind import Logind
from snitchd.logwriter.protocol import AppRate
from snitchd.modes import Switch
from snitchd.polkit import ANSWER_ALLOW_FOREVER, check_authorization
from snitchd.profiles import Profile
from snitchd.prompts import Agent, Prompt
from snitchd.proposals import Proposal, listed
from snitchd.queries import (
    LogQuery,
    Period,
    QueryGate,
    Reader,
    RuleStats,
    read_apps,
    read_connections,
    read_rule_stats,
    read_top,
    read_traffic,
)
from snitchd.status import Status, status_of
from snitchd.store import Decision, Store, decision_row
from snitchd.switching import Switcher

__all__ = ["DBusTransport", "FirewallService", "prompt_dict", "serve"]

log = logging.getLogger(__name__)

VarDict = Annotated[dict[str, Variant], DBusSignature("a{sv}")]
VarDicts = Annotated[list[dict[str, Variant]], DBusSignature("aa{sv}")]

T = TypeVar("T")

PROVE_TIMEOUT = 5.0  # an agent answers Prove from its bus loop at once


def _record_plain(record: RuleRecord) -> dict[str, object]:
    return {
        "id": record.id,
        "text": str(record.rule),
        "action": record.rule.action.value,
        "created": record.created,
        "last_hit": record.last_hit or 0.0,
        "hits": record.hits,
        "origin": record.origin,
        "note": record.note,
        "enabled": record.enabled,
    }


def _record_dict(record: RuleRecord) -> dict[str, Variant]:
    return _variants(_record_plain(record))


def _variants(row: dict[str, Any]) -> dict[str, Variant]:
    out: dict[str, Variant] = {}
    for key, value in row.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = Variant("b", value)
        elif isinstance(value, int):
            out[key] = Variant("x", value)
        elif isinstance(value, float):
            out[key] = Variant("d", value)
        else:
            out[key] = Variant("s", str(value))
    return out


def _arg(query: dict[str, Variant], key: str, kind: type[T]) -> T | None:
    if key not in query:
        return None
    value = query[key].value
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise RuleError(f"argument {key!r}: expected {kind.__name__}")
    return value


def _count(query: dict[str, Variant], key: str, default: int) -> int:
    value = _arg(query, key, int)
    if value is None:
        return default
    if value < 0:
        raise RuleError(f"argument {key!r}: must be 0 or more, not {value}")
    return value


def _limit(query: dict[str, Variant], most: int, default: int | None = None) -> int:
    """The `limit` argument, clamped to `most` (documented per method): a caller pages for more."""
    return min(_count(query, "limit", most if default is None else default), most)


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
    out = _variants(fields)
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
        self._call(agent, "Alert", "a{sv}", [_variants(fields)])


class FirewallService(ServiceInterface):
    def __init__(
        self,
        firewall: Firewall,
        bus: MessageBus,
        backend: str,
        reader: Reader | None = None,
        switcher: Switcher | None = None,
    ) -> None:
        super().__init__(INTERFACE)
        self._switcher = switcher
        self.firewall = firewall
        self.bus = bus
        self.backend = backend
        self.gate = QueryGate()
        self._reader = reader
        self._uids: dict[str, int] = {}
        self._monitors: dict[str, int | None] = {}
        self.agents_refused = 0
        self._rate_watchers: dict[str, int | None] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.logind: Logind | None = None  # set by `serve`, once on the bus

    @property
    def admin_group(self) -> str:
        return self.firewall.config.admin_group

    @property
    def reader(self) -> Reader:
        if self._reader is None:
            raise SnitchError("cannot read the store: snitchd was started without a reader")
        return self._reader

    def name_lost(self, name: str) -> None:
        """A connection left the bus: forget its uid, monitor and prompts."""
        self._uids.pop(name, None)
        self._monitors.pop(name, None)
        self._rate_watchers.pop(name, None)
        self.firewall.broker.unregister(name)

    async def identify(self) -> Caller:
        """The caller, by the uid the bus reports for its connection (cached per unique name:
        a unique name is never reused on a bus). No sender, no rights."""
        name = sender()
        if not name:
            raise NotAuthorized("cannot identify the caller: the bus gave no sender")
        uid = self._uids.get(name)
        if uid is None:
            reply = await call_bus_daemon(self.bus, "GetConnectionUnixUser", "s", [name])
            if reply.message_type is not MessageType.METHOD_RETURN:
                raise NotAuthorized(f"cannot identify caller {name}")
            uid = int(reply.body[0])
            self._uids[name] = uid
        return Caller(name, uid, is_admin(uid, self.admin_group))

    @dbus_method()
    @handled(query=True)
    async def ListRules(self, query: VarDict) -> DBusStr:
        """A page of the rules as the firewall holds them: `offset` (0), `limit` (at most
        MAX_RULES_PAGE). Texts and counters are made in a worker: at 100k rules, one call
        walking all of them froze the packet loop 2-5 s."""
        offset = _count(query, "offset", 0)
        entries = await self.firewall.rule_entries()
        page = entries[offset : offset + _limit(query, MAX_RULES_PAGE)]
        store = self.firewall.store
        return await self.reader.run(lambda conn: _json(_rules_page(conn, page, store)))

    @dbus_method()
    @handled(admin="add rules")
    async def AddRule(self, text: DBusStr) -> VarDict:
        """Add a rule; a rule equal to one there already is not added twice: that one comes
        back, with `existing` true."""
        return await self._add(text, "")

    @dbus_method()
    @handled(admin="delete rules")
    async def DeleteRule(self, rule_id: DBusUInt64) -> VarDict:
        origin = f"uid {current_caller().uid}"
        return _record_dict(await self.firewall.delete_rule(rule_id, origin=origin))

    async def _add(self, text: str, note: str) -> dict[str, Variant]:
        origin = f"uid {current_caller().uid}"
        rule = parse_rule(text)
        if rule.profile is not None and self._switcher is not None:
            self._switcher.check_exists(rule.profile)  # a rule of no profile would hold nowhere
        record, added = await self.firewall.add_new_rule(rule, origin, note, dedup=True)
        return _record_dict(record) | {"existing": Variant("b", not added)}

    @dbus_method()
    @handled(query=True)
    async def Explain(self, query: VarDict) -> VarDict:
        dst = _arg(query, "dst", str)
        if dst is None:
            raise RuleError("explain needs dst")
        try:
            proto = Proto(_arg(query, "proto", str) or "tcp")
        except ValueError:
            raise RuleError("explain: proto must be tcp, udp or icmp") from None
        asked = ExplainQuery(
            dst,
            _arg(query, "port", int) or 0,
            proto,
            _arg(query, "exe", str),
            _arg(query, "uid", int),
            _arg(query, "pid", int),
            _arg(query, "iface", str) or "",
            _arg(query, "host", str),
            _arg(query, "script", str),
            _arg(query, "sha256", str),
            _arg(query, "container", str),
            _explain_runtime(query),
        )
        explained = await explain_flow(self.firewall, asked)
        return _explanation_dict(explained, self.firewall.config.default_action.value)

    @dbus_method()
    @handled()
    async def Status(self) -> VarDict:
        status = status_of(self.firewall, self.backend, self.agents_refused)
        shown = _status_dict(dataclasses.replace(status, routing=self._routing()))
        if self._switcher is not None:  # the network profiles follow (issue 17)
            shown["network"] = Variant("s", self._switcher.network.describe())
        return shown

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
        terminal = bool(_arg(options, "terminal", bool))
        return await self._register(path, terminal, bool(_arg(options, "take_over", bool)))

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
        programs = self.firewall.config.agent_programs
        found = await asyncio.to_thread(inspect_agent, pid, who.uid, programs)
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
        again = await asyncio.to_thread(inspect_agent, pid, who.uid, programs)
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
            _arg(answer, "action", str) or "",
            _arg(answer, "duration", str) or "once",
            _arg(answer, "scope", str) or "exact",
            _arg(answer, "reach", str) or "everywhere",
        )
        name, broker = current_caller().name, self.firewall.broker
        prompt = broker.prompt_for(parsed, name)
        if parsed.reach is Reach.PROFILE and prompt.profile and self._switcher is not None:
            self._switcher.check_exists(prompt.profile)  # deleted since: its rule holds nowhere
        permanent = parsed.lifetime[0] is Lifetime.FOREVER and parsed.action is Action.ALLOW
        if permanent and self.firewall.config.answers_need_auth:
            # Waits for the person to authenticate; the prompt may end meanwhile (answer()
            # then refuses, as for any prompt that is no longer open).
            await check_authorization(self.bus, name, ANSWER_ALLOW_FOREVER)
        rule_id = await broker.answer(parsed, name)
        return -1 if rule_id is None else rule_id

    @dbus_method()
    @handled()
    async def DeferPrompt(self, prompt_id: DBusUInt64) -> DBusDouble:
        """Hold one of the caller's prompts up to `prompt_hold_max` after it was asked (the
        person put it aside, or is choosing); returns the seconds left before the default."""
        return self.firewall.broker.defer(prompt_id, current_caller().name)

    @dbus_method()
    @handled(query=True)
    async def Log(self, query: VarDict) -> DBusStr:
        """The newest `limit` rows (100; at most MAX_LOG_ROWS) older than row `before`, oldest
        first; a user who is not an admin sees only their own flows."""
        wanted = LogQuery(
            since=_arg(query, "since", float),
            exe=_arg(query, "exe", str),
            action=_arg(query, "action", str),
            host=_arg(query, "host", str),
            uid=current_caller().own_only,
            before=_arg(query, "before", int),
            limit=_limit(query, MAX_LOG_ROWS, 100),
        )
        await self.firewall.events.flush()  # what was decided before the call is in the log
        return await self.reader.run(lambda conn: _json(read_connections(conn, wanted)))

    @dbus_method()
    @handled(query=True)
    async def Top(self, query: VarDict) -> DBusStr:
        """Per-app connections and bytes since a time (0: all of the log), the MAX_TOP_APPS
        apps with the most traffic."""
        since, uid = _arg(query, "since", float), current_caller().own_only
        await self.firewall.events.flush()
        return await self.reader.run(lambda conn: _json(read_top(conn, since, uid, MAX_TOP_APPS)))

    @dbus_method()
    @handled()
    async def Monitor(self) -> None:
        """Subscribe the caller to `Decision` signals, sent to it alone, as they happen (its
        own flows only unless it is an admin); ends when the caller leaves the bus."""
        who = current_caller()
        self._monitors[who.name] = who.own_only

    def on_decision(self, decision: Decision) -> None:
        if not self._monitors:
            return
        body = [_variants(decision_row(decision))]
        for name, uid in list(self._monitors.items()):
            if uid is None or uid == decision.proc.uid:
                self._signal(name, "Decision", "a{sv}", body)

    @dbus_method()
    @handled(query=True)
    async def Traffic(self, query: VarDict) -> DBusStr:
        """Traffic over `period` (1h, 24h, 7d, 30d) from the per-app rollups, at most 180
        points a series: the total and the MAX_SERIES_APPS busiest apps (only `app` if given);
        a user who is not an admin sees only their own flows."""
        period, app = _period(query), _arg(query, "app", str)
        uid, now = current_caller().own_only, time.time()
        await self.firewall.events.flush()
        return await self.reader.run(
            lambda conn: json.dumps(dataclasses.asdict(read_traffic(conn, period, now, uid, app)))
        )

    @dbus_method()
    @handled(query=True)
    async def Apps(self, query: VarDict) -> DBusStr:
        """Per app over `period` (24h unless given): bytes, attempts, blocked ones, first seen;
        the `limit` (at most MAX_TOP_APPS) apps with the most bytes."""
        period, limit = _period(query, Period.DAY), _limit(query, MAX_TOP_APPS)
        uid, now = current_caller().own_only, time.time()
        await self.firewall.events.flush()
        return await self.reader.run(
            lambda conn: json.dumps(
                [dataclasses.asdict(a) for a in read_apps(conn, period, now, uid, limit)]
            )
        )

    @dbus_method()
    @handled()
    async def MonitorRates(self) -> None:
        """Subscribe the caller to `Rates` signals (JSON text, about once a second, its own
        apps only unless it is an admin), sent to it alone; ends when it leaves the bus."""
        who = current_caller()
        self._rate_watchers[who.name] = who.own_only

    def on_rates(self, rates: tuple[AppRate, ...]) -> None:
        """The log writer's new rates window: one JSON text per audience (all apps for admins,
        a user's own otherwise), at most protocol-bounded (200 apps) each."""
        if not self._rate_watchers:
            return
        now = time.time()
        texts: dict[int | None, str] = {}
        for name, uid in list(self._rate_watchers.items()):
            text = texts.get(uid)
            if text is None:
                text = texts[uid] = _rates_json(rates, uid, now)
            self._signal(name, "Rates", "s", [text])

    @dbus_method()
    @handled(query=True)
    async def Lists(self) -> DBusStr:
        """Every registered list (JSON): name, source, format, what snitchd holds of it
        (domains, networks, loaded, updated, bytes) and the updater's last try (ok, checked,
        error). Anyone may read it: the updater, an unprivileged DynamicUser, reads its
        sources here. The status notes are files: read in a worker thread."""
        views = await asyncio.to_thread(self.firewall.lists.views)
        return json.dumps([_list_view(v) for v in views], sort_keys=True)

    @dbus_method()
    @handled(admin="add lists")
    async def AddList(self, name: DBusStr, source: DBusStr, format: DBusStr) -> DBusStr:
        try:
            fmt = ListFormat(format)
        except ValueError:
            raise ListError(f"invalid list format {format!r}: use hosts, domains or ips") from None
        spec = await self.firewall.lists.add(name, source, fmt)
        return json.dumps(_list_view(ListView(spec, None, None)), sort_keys=True)

    @dbus_method()
    @handled(admin="remove lists")
    async def RemoveList(self, name: DBusStr) -> DBusStr:
        spec = await self.firewall.lists.remove(name)
        return json.dumps(_list_view(ListView(spec, None, None)), sort_keys=True)

    @dbus_method()
    @handled(admin="update lists")
    async def UpdateLists(self, name: DBusStr) -> None:
        """Run the updater now (through systemd); `name` "" for every list."""
        if name and name not in self.firewall.lists.specs:
            raise ListError(f"cannot update list {name!r}: no such list (see: snitchctl lists)")
        await self.firewall.lists.start_update(name)

    @dbus_method()
    @handled()
    async def ListsChanged(self) -> None:
        """The updater's poke: new copies may be in lists_dir. It carries nothing, so anyone
        may send it; snitchd reads only what changed there, one refresh at a time."""
        task = asyncio.create_task(self.firewall.lists.refresh(), name="lists-refresh")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _signal(self, destination: str, member: str, signature: str, body: list[Any]) -> None:
        """A signal to one subscriber only (unicast: others' flows never reach it)."""
        self.bus.send(
            Message(
                message_type=MessageType.SIGNAL,
                destination=destination,
                path=OBJECT_PATH,
                interface=INTERFACE,
                member=member,
                signature=signature,
                body=body,
            )
        )

    # -- issue 18: rules edited in place, switched off and on, imported ------------------------

    @dbus_method()
    @handled(admin="add rules")
    async def AddRuleWithNote(self, text: DBusStr, note: DBusStr) -> VarDict:
        """AddRule, with a note people read (not part of the rule)."""
        return await self._add(text, note)

    @dbus_method()
    @handled(admin="edit rules")
    async def EditRule(self, rule_id: DBusUInt64, text: DBusStr, options: VarDict) -> VarDict:
        """New text for a rule ("": keep it), same id; `note` in options replaces its note.
        A rule of a rules.d file is refused (the error names the file)."""
        note = _arg(options, "note", str)
        if not text and note is None:
            raise RuleError("edit-rule needs new rule text or a note")
        origin = f"uid {current_caller().uid}"
        rule = parse_rule(text) if text else None
        return _record_dict(await self.firewall.edit_rule(rule_id, rule, note, origin))

    @dbus_method()
    @handled(admin="enable rules")
    async def EnableRule(self, rule_id: DBusUInt64) -> VarDict:
        origin = f"uid {current_caller().uid}"
        return _record_dict(await self.firewall.set_rule_enabled(rule_id, True, origin))

    @dbus_method()
    @handled(admin="disable rules")
    async def DisableRule(self, rule_id: DBusUInt64) -> VarDict:
        """Switch a rule off: it stays listed and matches nothing until enabled."""
        origin = f"uid {current_caller().uid}"
        return _record_dict(await self.firewall.set_rule_enabled(rule_id, False, origin))

    @dbus_method()
    @handled(admin="import rules")
    async def ImportRules(self, text: DBusStr, options: VarDict) -> DBusStr:
        """Rules as a rules file's text, applied all or nothing: the plan as JSON (`added`,
        `duplicates`, `invalid`, `applied`). With an invalid line, or `dry_run`, nothing
        changes."""
        dry_run = bool(_arg(options, "dry_run", bool))
        lines, bad = read_rules(text, lasting_only=False)
        plan: dict[str, Any] = {
            "invalid": [{"line": b.line, "text": b.text, "reason": b.reason} for b in bad],
            "added": [],
            "duplicates": [],
            "applied": False,
        }
        origin = f"import by uid {current_caller().uid}"
        added, twins = await self.firewall.import_rules(
            [line.rule for line in lines], origin, dry_run=dry_run or bool(bad)
        )
        plan["added"] = [{"id": r.id, "text": str(r.rule)} for r in added]
        plan["duplicates"] = [{"id": i, "text": str(r)} for r, i in twins]
        plan["applied"] = not (dry_run or bad)
        return json.dumps(plan)

    # -- modes and proposals (issue 17) --------------------------------------------------------

    @property
    def switcher(self) -> Switcher:
        if self._switcher is None:
            raise SnitchError("cannot change modes: snitchd was started without a switcher")
        return self._switcher

    @dbus_method()
    @handled()
    async def GetMode(self) -> VarDict:
        """The mode in force (`mode`, `since`, `by`; `until` and `previous` for a time limit,
        `until` 0 without), whether the caller may switch it (`may_switch`: admins only), and
        how many proposals the caller may see."""
        who = current_caller()
        fw = self.firewall
        book = fw.modes.book
        count = len(book) if who.admin else book.count_of(who.uid)
        return _mode_dict(fw.modes.state, fw.clock()) | {
            "may_switch": Variant("b", who.admin),
            "proposals": Variant("x", count),
        }

    @dbus_method()
    @handled(admin="switch modes")
    async def SetMode(self, mode: DBusStr, seconds: DBusDouble) -> VarDict:
        """Switch to `mode` for `seconds` (0: until switched again); open prompts are settled
        by the new mode at once. Returns the new state as GetMode does."""
        wanted = parse_mode(mode)
        if not 0 <= seconds <= MAX_FOR_SECONDS:
            raise ModeError(f"invalid time limit {seconds} s: give 0 (none) up to 366 days")
        by = f"by uid {current_caller().uid}"
        change = await self.switcher.set_mode(wanted, seconds or None, by)
        return _mode_dict(change.new, self.firewall.clock())

    @dbus_signal()
    def ModeChanged(self, state: dict[str, Variant]) -> VarDict:
        """Sent to everyone when the mode changes (its new state, as GetMode, with `was`
        and `why`): the mode is no secret, and every agent shows it."""
        return state

    def on_mode_changed(self, change: Switch) -> None:
        state = _mode_dict(change.new, self.firewall.clock())
        state["was"] = Variant("s", change.old.mode.value)
        state["why"] = Variant("s", change.why)
        self.ModeChanged(state)

    @dbus_method()
    @handled(query=True)
    async def ListProposals(self) -> DBusStr:
        """The proposals `learn` mode made (JSON: id, rule text, uid, count, first_seen,
        last_seen), by id; a user who is not an admin sees those of their own flows only."""
        uid = current_caller().own_only
        by_id = self.firewall.modes.book.snapshot()  # sorted, filtered, encoded in a worker
        return await asyncio.to_thread(
            lambda: json.dumps([_proposal_plain(p) for p in listed(by_id, uid)])
        )

    @dbus_method()
    @handled(admin="accept proposals")
    async def AcceptProposals(self, query: VarDict) -> DBusStr:
        """Turn proposals into rules: `ids` (at), or `all` (b) true. Unknown ids, or a
        proposal that is a rule already, change nothing and raise. Returns the new rules as
        ListRules does (JSON)."""
        by = f"uid {current_caller().uid}"
        made = await self.switcher.accept(_proposal_ids(query), by)
        return json.dumps([_record_plain(r) for r in made])

    @dbus_method()
    @handled(admin="reject proposals")
    async def RejectProposals(self, query: VarDict) -> DBusStr:
        """Drop proposals: `ids` (at), or `all` (b) true; returns those dropped (JSON)."""
        by = f"uid {current_caller().uid}"
        dropped = await self.switcher.reject(_proposal_ids(query), by)
        return json.dumps([_proposal_plain(p) for p in dropped])

    @dbus_method()
    @handled()
    async def ListProfiles(self) -> DBusStr:
        """The profiles (JSON: name, mode, networks, active) and the network now (`network`:
        iface, gateway, gateway_mac, ssid), for anyone: they hold no one's secrets."""
        sw, fw = self.switcher, self.firewall
        net = sw.network
        return json.dumps(
            {
                "profiles": [_profile_plain(p, fw.profile) for p in sw.listed_profiles()],
                "active": fw.profile,
                "network": {
                    "iface": net.iface,
                    "gateway": net.gateway,
                    "gateway_mac": net.gateway_mac,
                    "ssid": net.ssid,
                    "describe": net.describe(),
                },
            }
        )

    @dbus_method()
    @handled(admin="create profiles")
    async def CreateProfile(self, query: VarDict) -> DBusStr:
        """`name` (s), `mode` (s, optional), `networks` (as: gateway=MAC, iface=NAME,
        ssid=NAME). Returns the profile (JSON)."""
        name = _arg(query, "name", str) or ""
        networks = query["networks"].value if "networks" in query else []
        if not isinstance(networks, list) or not all(isinstance(n, str) for n in networks):
            raise ProfileError("argument 'networks': expected a list of strings")
        by = f"uid {current_caller().uid}"
        made = await self.switcher.create_profile(name, _arg(query, "mode", str), networks, by)
        return json.dumps(_profile_plain(made, self.firewall.profile))

    @dbus_method()
    @handled(admin="delete profiles")
    async def DeleteProfile(self, name: DBusStr) -> None:
        await self.switcher.delete_profile(name, f"uid {current_caller().uid}")

    @dbus_method()
    @handled(admin="switch profiles")
    async def ActivateProfile(self, name: DBusStr) -> None:
        """Make `name` the active profile ("" for none); its mode, if it has one, follows."""
        await self.switcher.activate(name or None, f"by uid {current_caller().uid}")

    @dbus_signal()
    def ProfileChanged(self, change: dict[str, Variant]) -> VarDict:
        """Sent to everyone when the active profile changes: `profile`, `was` ("" for none),
        `why`."""
        return change

    def on_profile_changed(self, old: str | None, new: str | None, why: str) -> None:
        self.ProfileChanged(
            {
                "profile": Variant("s", new or ""),
                "was": Variant("s", old or ""),
                "why": Variant("s", why),
            }
        )

    # -- issue 19: the rules changed (snitchd/rulenews.py gathers and paces it) ----------------

    @dbus_signal()
    def RulesChanged(self, change: dict[str, Variant]) -> VarDict:
        """Sent to everyone, at most a few times a second, when rules are added, changed or
        removed, whoever changed them: `generation` (t, counts the signals), `changed` and
        `removed` (at, rule ids), `everything` (b: read them all). Ids only: anyone may list
        the rules, never learn more here (snitch_common.rulechange)."""
        return change


def _list_view(view: ListView) -> dict[str, Any]:
    spec, held, status = view.spec, view.held, view.status
    row: dict[str, Any] = {
        "name": spec.name,
        "source": spec.source,
        "format": spec.format.value,
        "added": spec.added,
    }
    if held is not None:
        row |= {
            "domains": held.domains,
            "networks": held.networks,
            "loaded": held.loaded,
            "updated": held.updated,
            "bytes": held.bytes,
        }
    if status is not None:
        row |= {"ok": status.ok, "checked": status.checked, "error": status.error}
    return row


def _profile_plain(p: Profile, active: str | None) -> dict[str, object]:
    return {
        "name": p.name,
        "mode": p.mode.value if p.mode is not None else None,
        "networks": [str(m) for m in p.networks],
        "active": p.name == active,
        "created": p.created,
    }


def _mode_dict(state: ModeState, now: float) -> dict[str, Variant]:
    out = {
        "mode": Variant("s", state.mode.value),
        "since": Variant("d", state.since),
        "by": Variant("s", state.by),
        "until": Variant("d", state.until or 0.0),
        "describe": Variant("s", state.describe(now)),
    }
    if state.previous is not None:
        out["previous"] = Variant("s", state.previous.value)
    return out


def _proposal_plain(p: Proposal) -> dict[str, object]:
    return {
        "id": p.id,
        "text": str(p.rule),
        "uid": p.uid,
        "count": p.count,
        "first_seen": p.first_seen,
        "last_seen": p.last_seen,
    }


def _proposal_ids(query: dict[str, Variant]) -> list[int] | None:
    """`ids` or `all`, exactly one of them: None stands for all. An empty list is refused, so
    that a script whose list came out empty does not accept everything."""
    every = _arg(query, "all", bool)
    if "ids" in query:
        value = query["ids"].value
        if every or not isinstance(value, list) or not value:
            raise ModeError("give proposal ids, or all, not both and not an empty list")
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
            raise ModeError("argument 'ids': expected a list of proposal ids")
        return [int(i) for i in value]
    if not every:
        raise ModeError("give proposal ids, or all (see: snitchctl proposals)")
    return None


def _period(query: dict[str, Variant], default: Period = Period.HOUR) -> Period:
    text = _arg(query, "period", str)
    if text is None:
        return default
    try:
        return Period(text)
    except ValueError:
        choices = ", ".join(p.value for p in Period)
        raise RuleError(f"argument 'period': {text!r} is not one of {choices}") from None


def _rates_json(rates: tuple[AppRate, ...], uid: int | None, now: float) -> str:
    apps = [
        {
            "app": r.app,
            "uid": r.uid,
            "out": r.bytes_out,
            "in": r.bytes_in,
            "rate_out": r.bytes_out / r.seconds,
            "rate_in": r.bytes_in / r.seconds,
            "flows": r.flows,
            "total_out": r.total_out,
            "total_in": r.total_in,
            "attempts": r.attempts,
            "blocked": r.blocked,
        }
        for r in rates
        if (uid is None or r.uid == uid) and r.seconds > 0
    ]
    seconds = rates[0].seconds if rates else 0.0
    return json.dumps({"time": now, "seconds": seconds, "apps": apps})


def _rules_page(
    conn: sqlite3.Connection, page: list[tuple[int, Rule]], store: Store
) -> list[dict[str, object]]:
    """In a worker: each rule's text, and its counters (from the store, or from memory for a
    rule kept until restart)."""
    stats = read_rule_stats(conn, [rule_id for rule_id, _ in page])
    out = []
    for rule_id, rule in page:
        record = store.memory_record(rule_id)
        if record is None:
            s = stats.get(rule_id, RuleStats(0.0, None, 0, ""))
            record = RuleRecord(
                rule_id, rule, s.created, s.last_hit, s.hits, s.origin, s.note, s.enabled
            )
        out.append(_record_plain(record))
    return out


def _json(rows: list[dict[str, Any]]) -> str:
    """Rows as one JSON text, made in the worker. Log, Top and ListRules answer this, not
    aa{sv}: marshalling 1,000 a{sv} rows took ~7 ms on the packet loop (dbus-fast 5.2, idle
    machine) and ~100 ms under load; one string is copied. Absent values are left out, as
    a{sv} did."""
    return json.dumps([{k: v for k, v in row.items() if v is not None} for row in rows])


def _explain_runtime(query: dict[str, Variant]) -> Runtime | None:
    """Explain's `runtime` (issue 16), which needs a `container`."""
    value = _arg(query, "runtime", str)
    if not value:
        return None
    if not _arg(query, "container", str):
        raise RuleError("explain: runtime needs container (give --container NAME)")
    try:
        return Runtime(value)
    except ValueError:
        names = "|".join(r.value for r in Runtime)
        raise RuleError(f"explain: invalid runtime {value!r}: use {names}") from None


def _explanation_dict(explained: Explained, default: str) -> dict[str, Variant]:
    """The verdict and winner are the packet path's (`decide`); the matches are for reading."""
    verdict = explained.verdict
    winner = -1 if verdict is None or verdict.rule_id is None else verdict.rule_id
    return {
        "verdict": Variant("s", verdict.action.value if verdict else default),
        "winner": Variant("x", winner),
        "matches": Variant("a(ts)", [(i, str(r)) for i, r in explained.explanation.matches]),
        "default_action": Variant("s", default),
        "precedence": Variant("s", PRECEDENCE),
        "dst": Variant("s", str(explained.dst)),
        "names": Variant("as", sorted(explained.names)),
        "note": Variant("s", explained.note),
    }


def _status_dict(status: Status) -> dict[str, Variant]:
    """The one place a `Status` becomes a{sv}: its fields by name, the kernel's as kernel_*."""
    fields = {f.name: getattr(status, f.name) for f in dataclasses.fields(status)}
    kernel = fields.pop("kernel")
    routing = fields.pop("routing")
    out = _variants(fields | {f"kernel_{key}": value for key, value in kernel})
    out["routing"] = Variant("as", list(routing))
    return out


async def serve(firewall: Firewall, backend: str, switcher: Switcher | None = None) -> MessageBus:
    """Connect to the system bus (DBUS_SYSTEM_BUS_ADDRESS when set), export, own the name."""
    try:
        bus = await CallerAwareBus(bus_type=BusType.SYSTEM).connect()
    except Exception as exc:
        raise SnitchError(
            f"cannot connect to the system bus: {exc} (is dbus running? apt-get install dbus)"
        ) from None
    service = FirewallService(firewall, bus, backend, Reader(firewall.store.path), switcher)
    bus.export(OBJECT_PATH, service)
    if switcher is not None:
        switcher.listeners.append(service.on_mode_changed)
        switcher.profile_listeners.append(service.on_profile_changed)
    firewall.events.listeners.append(service.on_decision)
    firewall.events.rate_listeners.append(service.on_rates)
    firewall.news.listeners.append(lambda news: service.RulesChanged(news.to_bus()))
    firewall.broker.transport = DBusTransport(bus, firewall.config.default_action.value)

    def on_signal(msg: Message) -> None:
        if (
            msg.message_type is MessageType.SIGNAL
            and msg.member == "NameOwnerChanged"
            and msg.sender == "org.freedesktop.DBus"
            and msg.body[2] == ""
        ):
            service.name_lost(msg.body[0])

    bus.add_message_handler(on_signal)
    owner_changes = "type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged'"
    await call_bus_daemon(bus, "AddMatch", "s", [owner_changes])
    service.logind = Logind(bus)
    firewall.broker.use_sessions(service.session_active, service.session_known)
    await service.logind.watch()
    try:
        reply = await bus.request_name(BUS_NAME)
    except DBusError as exc:
        bus.disconnect()
        raise SnitchError(
            f"cannot own {BUS_NAME} on the system bus: {exc.text} (is the D-Bus policy "
            "/usr/share/dbus-1/system.d/org.snitch.Firewall1.conf installed?)"
        ) from None
    if reply.value != 1:
        bus.disconnect()
        raise SnitchError(
            f"cannot own {BUS_NAME} on the system bus (reply {reply.name}): is another snitchd "
            "running? try: snitchctl status"
        )
    log.info("D-Bus service ready name=%s", BUS_NAME)
    return bus
