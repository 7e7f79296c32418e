"""The D-Bus client of `org.snitch.Firewall1`, shared by `snitchctl` and the notifier.

It sends plain method calls (no introspection round trip) and turns error replies back into the
`SnitchError` the daemon raised, so callers handle one error tree whichever side failed. The bus
address comes from DBUS_SYSTEM_BUS_ADDRESS when set (tests run a private bus).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from snitchd.errors import (
    DBUS_ERROR_PREFIX,
    DaemonUnreachable,
    NotAuthorized,
    SnitchError,
    error_for_code,
)

__all__ = ["Client", "call_bus_daemon", "plain"]

BUS_NAME = "org.snitch.Firewall1"
OBJECT_PATH = "/org/snitch/Firewall1"
INTERFACE = "org.snitch.Firewall1"

_UNREACHABLE = (
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.NoReply",
    "org.freedesktop.DBus.Error.Disconnected",
)


async def call_bus_daemon(bus: MessageBus, member: str, signature: str, body: list[Any]) -> Message:
    """A call to the bus itself (org.freedesktop.DBus): caller identity, match rules."""
    reply = await bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member=member,
            signature=signature,
            body=body,
        )
    )
    assert reply is not None
    return reply


def plain(value: Any) -> Any:
    """Variants (and containers of them) → plain Python values, for printing and JSON."""
    if isinstance(value, Variant):
        return plain(value.value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


class Client:
    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus

    @classmethod
    async def connect(cls) -> Client:
        try:
            bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        except Exception as exc:
            raise DaemonUnreachable(
                f"cannot connect to the system bus: {exc} (is dbus running?)"
            ) from None
        return cls(bus)

    def close(self) -> None:
        self.bus.disconnect()

    async def call(self, member: str, signature: str = "", body: list[Any] | None = None) -> Any:
        reply = await self.bus.call(
            Message(
                destination=BUS_NAME,
                path=OBJECT_PATH,
                interface=INTERFACE,
                member=member,
                signature=signature,
                body=body or [],
            )
        )
        assert reply is not None
        if reply.message_type is MessageType.ERROR:
            raise _error(reply)
        return reply.body[0] if reply.body else None

    async def list_rules(self) -> list[dict[str, Any]]:
        return [plain(r) for r in await self.call("ListRules")]

    async def add_rule(self, text: str) -> dict[str, Any]:
        return dict(plain(await self.call("AddRule", "s", [text])))

    async def delete_rule(self, rule_id: int) -> dict[str, Any]:
        return dict(plain(await self.call("DeleteRule", "t", [rule_id])))

    async def explain(self, query: dict[str, Variant]) -> dict[str, Any]:
        return dict(plain(await self.call("Explain", "a{sv}", [query])))

    async def status(self) -> dict[str, Any]:
        return dict(plain(await self.call("Status")))

    async def answer_prompt(self, prompt_id: int, action: str, duration: str, scope: str) -> int:
        """Returns the id of the rule the answer made, or -1 for an answer given once."""
        answer = {
            "action": Variant("s", action),
            "duration": Variant("s", duration),
            "scope": Variant("s", scope),
        }
        return int(await self.call("AnswerPrompt", "ta{sv}", [prompt_id, answer]))

    async def list_prompts(self) -> list[dict[str, Any]]:
        return [plain(p) for p in await self.call("ListPrompts")]

    async def top(self, query: dict[str, Variant]) -> list[dict[str, Any]]:
        return [plain(r) for r in await self.call("Top", "a{sv}", [query])]

    async def monitor(self, on_decision: Callable[[dict[str, Any]], None]) -> None:
        """Subscribe; `on_decision` gets each decision as it happens until the client closes."""

        def handler(msg: Message) -> bool:
            if msg.message_type is MessageType.SIGNAL and msg.member == "Decision":
                on_decision(plain(msg.body[0]))
                return True
            return False

        self.bus.add_message_handler(handler)
        await self.call("Monitor")

    async def log(self, query: dict[str, Variant]) -> list[dict[str, Any]]:
        return [plain(r) for r in await self.call("Log", "a{sv}", [query])]


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
