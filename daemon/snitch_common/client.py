"""The D-Bus client of `org.snitch.Firewall1`, shared by `snitchctl` and the notifier.

It sends plain method calls (no introspection round trip) and turns error replies back into the
`SnitchError` the daemon raised, so callers handle one error tree whichever side failed. The bus
address comes from DBUS_SYSTEM_BUS_ADDRESS when set (tests run a private bus).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from dbus_fast import BusType, Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus

from snitch_common.answers import Answer
from snitch_common.bus import (
    BUS_NAME,
    INTERFACE,
    MAX_LOG_ROWS,
    MAX_RULES_PAGE,
    OBJECT_PATH,
    call_bus_daemon,
    patient_writes,
    plain,
)
from snitch_common.errors import (
    DBUS_ERROR_PREFIX,
    DaemonUnreachable,
    NotAuthorized,
    SnitchError,
    error_for_code,
)
from snitch_common.rulechange import RulesChanged

__all__ = ["Client"]

_UNREACHABLE = (
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.NoReply",
    "org.freedesktop.DBus.Error.Disconnected",
)


# snitchd's name changing hands; the bus daemon sends it (a signal any client could send us comes
# from that client's own name instead, and is ignored).
_BUS_DAEMON = "org.freedesktop.DBus"
_OWNER_MATCH = (
    f"type='signal',sender='{_BUS_DAEMON}',interface='{_BUS_DAEMON}',"
    f"member='NameOwnerChanged',arg0='{BUS_NAME}'"
)

# A bound on any paging loop: 100,000 pages of 1,000 rules is far more than a machine holds.
_MAX_PAGES = 100_000


class Client:
    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self._owner: str | None = None  # snitchd's unique name, once a watch needs it

    @classmethod
    async def connect(cls) -> Client:
        try:
            bus = patient_writes(await MessageBus(bus_type=BusType.SYSTEM).connect())
        except Exception as exc:
            raise DaemonUnreachable(
                f"cannot connect to the system bus: {exc} (is dbus running?)"
            ) from None
        return cls(bus)

    def close(self) -> None:
        self.bus.disconnect()

    async def call(self, member: str, signature: str = "", body: list[Any] | None = None) -> Any:
        reply = await self._reply(member, signature, body)
        return reply.body[0] if reply.body else None

    async def _reply(
        self, member: str, signature: str = "", body: list[Any] | None = None
    ) -> Message:
        reply = await self.bus.call(
            Message(
                destination=BUS_NAME,
                path=OBJECT_PATH,
                interface=INTERFACE,
                member=member,
                signature=signature,
                body=body or [],
                # Never start snitchd by calling it: a stopped firewall stays stopped until
                # systemd or an admin starts it (any user could otherwise restart it).
                flags=MessageFlag.NO_AUTOSTART,
            )
        )
        assert reply is not None
        if reply.message_type is MessageType.ERROR:
            raise _error(reply)
        return reply

    async def daemon_owner(self) -> str:
        """snitchd's unique name on the bus now ('' when it is not running)."""
        reply = await call_bus_daemon(self.bus, "GetNameOwner", "s", [BUS_NAME])
        if reply.message_type is MessageType.ERROR:
            return ""
        owner: str = reply.body[0]
        return owner

    async def watch_daemon(self, on_owner: Callable[[str], None]) -> None:
        """`on_owner` gets snitchd's unique name each time its bus name changes hands ('' when
        snitchd left the bus). What snitchd keeps for a caller in memory (a subscription, an
        agent's registration) went with the process that kept it: a new owner must be asked
        again."""
        reply = await call_bus_daemon(self.bus, "AddMatch", "s", [_OWNER_MATCH])
        if reply.message_type is MessageType.ERROR:
            raise SnitchError(f"cannot watch snitchd's name on the bus: {reply.body}")

        def handler(msg: Message) -> bool:
            if (
                msg.message_type is MessageType.SIGNAL
                and msg.sender == _BUS_DAEMON
                and msg.member == "NameOwnerChanged"
                and msg.body[0] == BUS_NAME
            ):
                on_owner(msg.body[2])
            return False

        self.bus.add_message_handler(handler)

    async def _follow_owner(self) -> None:
        """Keep `_owner` current: broadcast signals (ModeChanged, RulesChanged) are believed
        only from it. A match rule's sender does not filter a signal sent to us by name, and
        the bus lets any client send one: a forged ModeChanged would show the tray a mode
        snitchd is not in."""
        if self._owner is not None:
            return
        self._owner = ""

        def take(owner: str) -> None:
            self._owner = owner

        await self.watch_daemon(take)
        self._owner = await self.daemon_owner()

    async def _subscribe(self, member: str, signal: str, take: Callable[[Any], None]) -> None:
        """Ask snitchd for its `signal`s; `take` gets each one's first argument until the
        client closes. Only signals from the snitchd that took the subscription count: any
        client on the bus may send us a signal of that name (a forged decision or rate), and a
        snitchd started since has no subscription of ours (`watch_daemon` says when)."""
        owner = await self.daemon_owner()

        def handler(msg: Message) -> bool:
            if (
                msg.message_type is MessageType.SIGNAL
                and msg.member == signal
                and msg.sender == owner
            ):
                take(msg.body[0])
                return True
            return False

        self.bus.add_message_handler(handler)
        try:
            reply = await self._reply(member)
            if reply.sender != owner:  # snitchd restarted between the two calls
                raise DaemonUnreachable("snitchd restarted while subscribing: try again")
        except BaseException:
            # Refused or gone: no subscription, so no handler left to take a later one's
            # signals a second time.
            self.bus.remove_message_handler(handler)
            raise

    async def list_rules(self) -> list[dict[str, Any]]:
        """Every rule, a page at a time (snitchd answers at most MAX_RULES_PAGE a call). Rules
        changed between two pages may be missed or seen twice: the list is a view, not a lock."""
        rules: list[dict[str, Any]] = []
        for _ in range(_MAX_PAGES):
            query = {"offset": Variant("t", len(rules)), "limit": Variant("t", MAX_RULES_PAGE)}
            page = json.loads(await self.call("ListRules", "a{sv}", [query]))
            rules += page
            if len(page) < MAX_RULES_PAGE:
                break
        return rules

    async def add_rule(self, text: str) -> dict[str, Any]:
        return dict(plain(await self.call("AddRule", "s", [text])))

    async def add_rule_with_note(self, text: str, note: str) -> dict[str, Any]:
        return dict(plain(await self.call("AddRuleWithNote", "ss", [text, note])))

    async def edit_rule(self, rule_id: int, text: str, note: str | None) -> dict[str, Any]:
        """New text ("": keep it) and/or note (None: keep it) for a rule, same id."""
        options = {} if note is None else {"note": Variant("s", note)}
        return dict(plain(await self.call("EditRule", "tsa{sv}", [rule_id, text, options])))

    async def set_rule_enabled(self, rule_id: int, enabled: bool) -> dict[str, Any]:
        member = "EnableRule" if enabled else "DisableRule"
        return dict(plain(await self.call(member, "t", [rule_id])))

    async def import_rules(self, text: str, *, dry_run: bool) -> dict[str, Any]:
        """The plan: `added`, `duplicates` (id, text, note kept, dropped_note), `invalid`
        (line, text, reason), `applied`."""
        options = {"dry_run": Variant("b", dry_run)}
        plan: dict[str, Any] = json.loads(await self.call("ImportRules", "sa{sv}", [text, options]))
        return plan

    async def delete_rule(self, rule_id: int) -> dict[str, Any]:
        return dict(plain(await self.call("DeleteRule", "t", [rule_id])))

    async def explain(self, query: dict[str, Variant]) -> dict[str, Any]:
        return dict(plain(await self.call("Explain", "a{sv}", [query])))

    async def status(self) -> dict[str, Any]:
        return dict(plain(await self.call("Status")))

    async def answer_prompt(self, answer: Answer) -> int:
        """Returns the id of the rule the answer made, or -1 for an answer given once."""
        words = {
            "action": Variant("s", answer.action.value),
            "duration": Variant("s", answer.duration),
            "scope": Variant("s", answer.scope.value),
            "reach": Variant("s", answer.reach.value),
        }
        return int(await self.call("AnswerPrompt", "ta{sv}", [answer.prompt_id, words]))

    async def defer_prompt(self, prompt_id: int) -> float:
        """Hold a prompt of ours up to snitchd's `prompt_hold_max`; returns the seconds left."""
        return float(await self.call("DeferPrompt", "t", [prompt_id]))

    async def top(self, query: dict[str, Variant]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(await self.call("Top", "a{sv}", [query]))
        return rows

    async def traffic(self, query: dict[str, Variant]) -> dict[str, Any]:
        """Traffic over query["period"] (1h, 24h, 7d, 30d): `total` and the busiest `apps`,
        each with `points` of [bucket start, bytes out, bytes in, blocked]."""
        report: dict[str, Any] = json.loads(await self.call("Traffic", "a{sv}", [query]))
        return report

    async def apps(self, query: dict[str, Variant]) -> list[dict[str, Any]]:
        """Per app over query["period"] (24h by default): bytes, attempts, blocked, first seen."""
        rows: list[dict[str, Any]] = json.loads(await self.call("Apps", "a{sv}", [query]))
        return rows

    async def monitor_rates(self, on_rates: Callable[[dict[str, Any]], None]) -> None:
        """Subscribe; `on_rates` gets each second's per-app rates (`apps`, each with out/in
        bytes of the window, rate_out/rate_in per second, flows, totals) from this snitchd
        until the client closes."""
        await self._subscribe("MonitorRates", "Rates", lambda text: on_rates(json.loads(text)))

    async def monitor(self, on_decision: Callable[[dict[str, Any]], None]) -> None:
        """Subscribe; `on_decision` gets each decision of this snitchd as it happens until the
        client closes."""
        await self._subscribe("Monitor", "Decision", lambda row: on_decision(plain(row)))

    async def log(self, query: dict[str, Variant]) -> list[dict[str, Any]]:
        """The newest `query["limit"]` rows (100 if absent) that pass its filters, oldest
        first; fetched back in time a page at a time (snitchd answers at most MAX_LOG_ROWS a
        call, whatever the limit)."""
        limit = int(query["limit"].value) if "limit" in query else 100
        pages: list[list[dict[str, Any]]] = []
        got = 0
        while got < limit:
            want = min(limit - got, MAX_LOG_ROWS)
            paged = query | {"limit": Variant("t", want)}
            if pages:
                paged["before"] = Variant("t", pages[-1][0]["id"])
            page: list[dict[str, Any]] = json.loads(await self.call("Log", "a{sv}", [paged]))
            pages.append(page)
            got += len(page)
            if len(page) < want:
                break
        return [row for page in reversed(pages) for row in page]

    async def lists(self) -> list[dict[str, Any]]:
        """Every block list: its source and format, what snitchd holds, the last update."""
        rows: list[dict[str, Any]] = json.loads(await self.call("Lists"))
        return rows

    async def add_list(self, name: str, source: str, fmt: str) -> dict[str, Any]:
        row: dict[str, Any] = json.loads(await self.call("AddList", "sss", [name, source, fmt]))
        return row

    async def remove_list(self, name: str) -> dict[str, Any]:
        row: dict[str, Any] = json.loads(await self.call("RemoveList", "s", [name]))
        return row

    async def update_lists(self, name: str = "") -> None:
        await self.call("UpdateLists", "s", [name])

    # -- modes and proposals (issue 17) -------------------------------------------------------

    async def get_mode(self) -> dict[str, Any]:
        """The mode in force: mode, since, by, until (0: no limit), previous, describe,
        may_switch (whether this caller may), proposals (how many it may see)."""
        return dict(plain(await self.call("GetMode")))

    async def set_mode(self, mode: str, seconds: float | None = None) -> dict[str, Any]:
        """Switch (admins only); `seconds` None: until switched again."""
        return dict(plain(await self.call("SetMode", "sd", [mode, float(seconds or 0.0)])))

    async def proposals(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(await self.call("ListProposals"))
        return rows

    async def accept_proposals(self, ids: list[int] | None) -> list[dict[str, Any]]:
        """Proposals (None: all) become rules; returns the rules made."""
        rows: list[dict[str, Any]] = json.loads(
            await self.call("AcceptProposals", "a{sv}", [_proposal_query(ids)])
        )
        return rows

    async def reject_proposals(self, ids: list[int] | None) -> list[dict[str, Any]]:
        """Proposals (None: all) are dropped; returns those dropped."""
        rows: list[dict[str, Any]] = json.loads(
            await self.call("RejectProposals", "a{sv}", [_proposal_query(ids)])
        )
        return rows

    async def watch_mode(self, on_change: Callable[[dict[str, Any]], None]) -> None:
        """`on_change` gets each ModeChanged signal (the new state, with `was` and `why`)."""
        await self._watch("ModeChanged", on_change)

    async def watch_rules(self, on_change: Callable[[RulesChanged], None]) -> None:
        """`on_change` gets each RulesChanged signal (which rule ids changed; issue 19)."""
        await self._watch("RulesChanged", lambda body: on_change(RulesChanged.from_bus(body)))

    async def _watch(self, member: str, take: Callable[[dict[str, Any]], None]) -> None:
        """`take` gets the state (a{sv}, made plain) of each `member` signal snitchd sends to
        everyone, believed only from its current name owner (`_follow_owner`)."""
        rule = f"type='signal',sender='{BUS_NAME}',interface='{INTERFACE}',member='{member}'"
        await self._follow_owner()
        await call_bus_daemon(self.bus, "AddMatch", "s", [rule])

        def handler(msg: Message) -> bool:
            if (
                msg.message_type is MessageType.SIGNAL
                and msg.member == member
                and msg.interface == INTERFACE
                and msg.signature == "a{sv}"
                and msg.sender == self._owner
            ):
                take(plain(msg.body[0]))
            return False

        self.bus.add_message_handler(handler)

    async def profiles(self) -> dict[str, Any]:
        """`profiles` (name, mode, networks, active), `active`, `network` (the one now)."""
        report: dict[str, Any] = json.loads(await self.call("ListProfiles"))
        return report

    async def create_profile(
        self, name: str, mode: str | None, networks: list[str]
    ) -> dict[str, Any]:
        query = {"name": Variant("s", name), "networks": Variant("as", networks)}
        if mode:
            query["mode"] = Variant("s", mode)
        made: dict[str, Any] = json.loads(await self.call("CreateProfile", "a{sv}", [query]))
        return made

    async def delete_profile(self, name: str) -> None:
        await self.call("DeleteProfile", "s", [name])

    async def activate_profile(self, name: str | None) -> None:
        """Make `name` the active profile (None: none)."""
        await self.call("ActivateProfile", "s", [name or ""])


def _proposal_query(ids: list[int] | None) -> dict[str, Variant]:
    if ids is None:
        return {"all": Variant("b", True)}
    return {"ids": Variant("at", ids)}


def _error(reply: Message) -> SnitchError:
    name = reply.error_name or ""
    text = str(reply.body[0]) if reply.body else name
    if name.startswith(DBUS_ERROR_PREFIX):
        return error_for_code(name[len(DBUS_ERROR_PREFIX) :], text)
    if name in _UNREACHABLE:
        return DaemonUnreachable(f"snitchd is not running or not on this bus ({text})")
    if name == "org.freedesktop.DBus.Error.AccessDenied":
        return NotAuthorized(f"the D-Bus policy refused the call: {text}")
    return SnitchError(f"D-Bus error {name}: {text}")
