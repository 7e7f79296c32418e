"""The D-Bus service `org.snitch.Firewall1` on the system bus: a translator, not a decider.

Each method checks the caller, turns D-Bus values into records, calls the firewall, and turns the
result (or a `SnitchError`) back into D-Bus values. The policy file in `systemd/` is the first
gate; this module checks again by the caller's uid (root or the admin group may change rules),
because a policy file can be edited or missing. Rules travel as their text form, records as
`a{sv}` so fields can be added without breaking clients. An unexpected exception is logged with
its traceback and returned as a generic error, never the traceback.
"""

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from dbus_fast import BusType, DBusError, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import (
    DBusInt64,
    DBusObjectPath,
    DBusSignature,
    DBusStr,
    DBusUInt32,
    DBusUInt64,
)
from dbus_fast.service import ServiceInterface, dbus_method

from snitch_common import __version__
from snitch_common.answers import parse_answer
from snitch_common.bus import AGENT_INTERFACE, BUS_NAME, INTERFACE, OBJECT_PATH, call_bus_daemon
from snitch_common.errors import DBUS_ERROR_PREFIX, NotAuthorized, RuleError, SnitchError
from snitch_common.records import Proto
from snitch_common.rules import RuleRecord, parse_rule
from snitchd.access import is_admin
from snitchd.decide import PRECEDENCE
from snitchd.events import Alert
from snitchd.firewall import Firewall
from snitchd.prompts import Agent, Prompt
from snitchd.queue import kernel_stats
from snitchd.store import Decision, LogQuery, decision_row

__all__ = [
    "CallerAwareBus",
    "DBusTransport",
    "FirewallService",
    "prompt_dict",
    "serve",
]

log = logging.getLogger(__name__)

VarDict = Annotated[dict[str, Variant], DBusSignature("a{sv}")]
VarDicts = Annotated[list[dict[str, Variant]], DBusSignature("aa{sv}")]

_sender: contextvars.ContextVar[str] = contextvars.ContextVar("snitch_dbus_sender")
T = TypeVar("T")


class CallerAwareBus(MessageBus):
    """dbus-fast hides the message from exported methods; we need its sender to check the
    caller. The handler is wrapped so the sender sits in a context variable, which the method's
    task inherits (asyncio copies the context when it creates the task)."""

    def _make_method_handler(self, interface: Any, method: Any) -> Any:
        inner = super()._make_method_handler(interface, method)

        def handler(msg: Message, send_reply: Any) -> None:
            token = _sender.set(msg.sender or "")
            try:
                inner(msg, send_reply)
            finally:
                _sender.reset(token)

        return handler


def _record_dict(record: RuleRecord) -> dict[str, Variant]:
    return {
        "id": Variant("t", record.id),
        "text": Variant("s", str(record.rule)),
        "action": Variant("s", record.rule.action.value),
        "created": Variant("d", record.created),
        "last_hit": Variant("d", record.last_hit or 0.0),
        "hits": Variant("t", record.hits),
        "origin": Variant("s", record.origin),
    }


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


def prompt_dict(prompt: Prompt, default_action: str) -> dict[str, Variant]:
    """A prompt as agents see it: who asks, where to, and until when."""
    proc, flow = prompt.proc, prompt.flow
    fields: dict[str, Any] = {
        "id": prompt.id,
        "attribution": proc.attribution.value,
        "exe": proc.exe,
        "pid": proc.pid,
        "uid": proc.uid,
        "user": proc.user,
        "ppid": proc.ppid,
        "sha256": proc.sha256,
        "proto": flow.proto.value,
        "dst": str(flow.dst),
        "port": flow.dport,
        "iface": flow.iface,
        "host": prompt.host,
        "created": prompt.created,
        "deadline": prompt.deadline,
        "default_action": default_action,
    }
    out = _variants(fields)
    out["cmdline"] = Variant("as", list(proc.cmdline))
    out["parents"] = Variant("a(xs)", [[pid, exe] for pid, exe in proc.parents])
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
    def __init__(self, firewall: Firewall, bus: MessageBus, backend: str) -> None:
        super().__init__(INTERFACE)
        self.firewall = firewall
        self.bus = bus
        self.backend = backend
        self._uids: dict[str, int] = {}
        self._monitors: dict[str, int | None] = {}

    def name_lost(self, name: str) -> None:
        """A connection left the bus: forget its uid, monitor and prompts."""
        self._uids.pop(name, None)
        self._monitors.pop(name, None)
        self.firewall.broker.unregister(name)

    async def caller_uid(self) -> int:
        """The uid behind the calling connection, asked of the bus (cached per unique name:
        a unique name is never reused on a bus)."""
        sender = _sender.get()
        uid = self._uids.get(sender)
        if uid is None:
            reply = await call_bus_daemon(self.bus, "GetConnectionUnixUser", "s", [sender])
            if reply.message_type is not MessageType.METHOD_RETURN:
                raise NotAuthorized(f"cannot identify caller {sender}")
            uid = int(reply.body[0])
            self._uids[sender] = uid
        return uid

    async def require_admin(self, doing: str) -> int:
        uid = await self.caller_uid()
        if not is_admin(uid, self.firewall.config.admin_group):
            raise NotAuthorized(
                f"not authorized to {doing}: uid {uid} is neither root nor in group "
                f"{self.firewall.config.admin_group!r} (try: sudo snitchctl ...)"
            )
        return uid

    async def _guard(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except SnitchError as exc:
            raise DBusError(DBUS_ERROR_PREFIX + exc.code, exc.message) from None
        except Exception:
            log.exception("D-Bus method failed unexpectedly")
            raise DBusError(
                DBUS_ERROR_PREFIX + "Failed", "internal error: see the snitchd log"
            ) from None

    @dbus_method()
    async def ListRules(self) -> VarDicts:
        async def run() -> list[dict[str, Variant]]:
            return [_record_dict(r) for r in self.firewall.store.rules()]

        return await self._guard(run)

    @dbus_method()
    async def AddRule(self, text: DBusStr) -> VarDict:
        async def run() -> dict[str, Variant]:
            uid = await self.require_admin("add rules")
            record = await self.firewall.add_rule(parse_rule(text), origin=f"uid {uid}")
            return _record_dict(record)

        return await self._guard(run)

    @dbus_method()
    async def DeleteRule(self, rule_id: DBusUInt64) -> VarDict:
        async def run() -> dict[str, Variant]:
            uid = await self.require_admin("delete rules")
            return _record_dict(await self.firewall.delete_rule(rule_id, origin=f"uid {uid}"))

        return await self._guard(run)

    @dbus_method()
    async def Explain(self, query: VarDict) -> VarDict:
        async def run() -> dict[str, Variant]:
            dst = _arg(query, "dst", str)
            if dst is None:
                raise RuleError("explain needs dst")
            try:
                proto = Proto(_arg(query, "proto", str) or "tcp")
            except ValueError:
                raise RuleError("explain: proto must be tcp, udp or icmp") from None
            try:
                explanation = self.firewall.explain(
                    _arg(query, "exe", str),
                    dst,
                    _arg(query, "port", int) or 0,
                    proto,
                    _arg(query, "iface", str) or "",
                    _arg(query, "uid", int),
                )
            except ValueError as exc:
                raise RuleError(f"explain: {exc}") from None
            default = self.firewall.config.default_action.value
            winner = explanation.winner
            return {
                "verdict": Variant("s", winner[1].action.value if winner else default),
                "winner": Variant("x", winner[0] if winner else -1),
                "matches": Variant("a(ts)", [(i, str(r)) for i, r in explanation.matches]),
                "default_action": Variant("s", default),
                "precedence": Variant("s", PRECEDENCE),
            }

        return await self._guard(run)

    @dbus_method()
    async def Status(self) -> VarDict:
        async def run() -> dict[str, Variant]:
            fw = self.firewall
            c = fw.counters
            return _variants(
                {
                    "version": __version__,
                    "running": True,
                    "backend": self.backend,
                    "agents": len(fw.broker.agents),
                    "prompts_open": len(fw.broker.open),
                    "prompts_asked": fw.broker.asked,
                    "prompts_timed_out": fw.broker.timed_out,
                    "fail_mode": fw.config.fail_mode,
                    "default_action": fw.config.default_action.value,
                    "queue": fw.config.queue,
                    "seen": c.seen,
                    "accepted": c.accepted,
                    "dropped": c.dropped,
                    "rejected": c.rejected,
                    "errors": c.errors,
                    "by_default": c.by_default,
                    "dns_answers": c.dns_answers,
                    "dns_skipped": c.dns_skipped,
                    "names_known": len(fw.names),
                    "rules": len(fw.rules),
                    "log_rows_written": fw.events.written,
                    "log_rows_dropped": fw.events.dropped,
                    "log_writer_pid": fw.events.writer_pid or 0,
                    "log_writer_starts": fw.events.writer_starts,
                    "started": c.started,
                    "database": fw.store.path,
                }
                | {f"kernel_{k}": v for k, v in kernel_stats(fw.config.queue).items()}
            )

        return await self._guard(run)

    @dbus_method()
    async def RegisterAgent(self, path: DBusObjectPath) -> DBusUInt32:
        """Register the caller as the agent of its own user; prompts come to `path`."""

        async def run() -> int:
            uid = await self.caller_uid()
            self.firewall.broker.register(_sender.get(), path, uid)
            return uid

        return await self._guard(run)

    @dbus_method()
    async def UnregisterAgent(self) -> None:
        async def run() -> None:
            self.firewall.broker.unregister(_sender.get())

        await self._guard(run)

    @dbus_method()
    async def ListPrompts(self) -> VarDicts:
        """The caller's open prompts only: an agent never sees another user's."""

        async def run() -> list[dict[str, Variant]]:
            default = self.firewall.config.default_action.value
            return [prompt_dict(p, default) for p in self.firewall.broker.visible_to(_sender.get())]

        return await self._guard(run)

    @dbus_method()
    async def AnswerPrompt(self, prompt_id: DBusUInt64, answer: VarDict) -> DBusInt64:
        """Answer one of the caller's prompts; returns the new rule's id, or -1 for once."""

        async def run() -> int:
            parsed = parse_answer(
                prompt_id,
                _arg(answer, "action", str) or "",
                _arg(answer, "duration", str) or "once",
                _arg(answer, "scope", str) or "exact",
            )
            rule_id = self.firewall.broker.answer(parsed, _sender.get())
            return -1 if rule_id is None else rule_id

        return await self._guard(run)

    @dbus_method()
    async def Log(self, query: VarDict) -> VarDicts:
        """The connection log; a user who is not an admin sees only their own flows."""

        async def run() -> list[dict[str, Variant]]:
            await self.firewall.events.flush()
            rows = self.firewall.store.connections(
                LogQuery(
                    since=_arg(query, "since", float),
                    exe=_arg(query, "exe", str),
                    action=_arg(query, "action", str),
                    host=_arg(query, "host", str),
                    uid=await self._own_only(),
                    limit=_arg(query, "limit", int) or 100,
                )
            )
            return [_variants(row) for row in rows]

        return await self._guard(run)

    @dbus_method()
    async def Top(self, query: VarDict) -> VarDicts:
        """Per-app connections and bytes since a time (0: all of the log)."""

        async def run() -> list[dict[str, Variant]]:
            await self.firewall.events.flush()
            rows = self.firewall.store.top(_arg(query, "since", float), await self._own_only())
            return [_variants(row) for row in rows]

        return await self._guard(run)

    @dbus_method()
    async def Monitor(self) -> None:
        """Subscribe the caller to `Decision` signals, sent to it alone, as they happen (its
        own flows only unless it is an admin); ends when the caller leaves the bus."""

        async def run() -> None:
            self._monitors[_sender.get()] = await self._own_only()

        await self._guard(run)

    async def _own_only(self) -> int | None:
        uid = await self.caller_uid()
        return None if is_admin(uid, self.firewall.config.admin_group) else uid

    def on_decision(self, decision: Decision) -> None:
        if not self._monitors:
            return
        body = [_variants(decision_row(decision))]
        for name, uid in list(self._monitors.items()):
            if uid is None or uid == decision.proc.uid:
                self.bus.send(
                    Message(
                        message_type=MessageType.SIGNAL,
                        destination=name,
                        path=OBJECT_PATH,
                        interface=INTERFACE,
                        member="Decision",
                        signature="a{sv}",
                        body=body,
                    )
                )


async def serve(firewall: Firewall, backend: str) -> MessageBus:
    """Connect to the system bus (DBUS_SYSTEM_BUS_ADDRESS when set), export, own the name."""
    try:
        bus = await CallerAwareBus(bus_type=BusType.SYSTEM).connect()
    except Exception as exc:
        raise SnitchError(
            f"cannot connect to the system bus: {exc} (is dbus running? apt-get install dbus)"
        ) from None
    service = FirewallService(firewall, bus, backend)
    bus.export(OBJECT_PATH, service)
    firewall.events.listeners.append(service.on_decision)
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
