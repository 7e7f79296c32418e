"""Who calls snitchd over D-Bus, and the one shape every method of its service has.

dbus-fast gives an exported method its arguments only; `CallerAwareBus` keeps each call's sender
where the method's task can read it, `handled` turns that into a `Caller` (uid, admin or not),
checks it, holds the caller's query slot, and maps errors: a `SnitchError` becomes its named
D-Bus error, anything else a traceback in the journal and a generic error for the caller.
"""

import asyncio
import contextvars
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

from dbus_fast import DBusError, Message
from dbus_fast.aio import MessageBus

from snitch_common.errors import DBUS_ERROR_PREFIX, NotAuthorized, SnitchError
from snitchd.callpace import CallPace
from snitchd.queries import QueryGate

__all__ = ["Caller", "CallerAwareBus", "current_caller", "handled", "sender"]

log = logging.getLogger(__name__)

_sender: contextvars.ContextVar[str] = contextvars.ContextVar("snitch_dbus_sender", default="")


def sender() -> str:
    """The unique bus name of the connection whose call this task serves ("" if none)."""
    return _sender.get()


class CallerAwareBus(MessageBus):
    """dbus-fast hides the message from exported methods; we need its sender to check the
    caller. The handler is wrapped so the sender sits in a context variable, which the method's
    task inherits (asyncio copies the context when it creates the task).

    `_make_method_handler` is private to dbus-fast, and it has no public way to learn a call's
    sender (5.2: `add_message_handler` runs before dispatch, but a sender left in a shared
    context by it could name the previous caller). So the versions are pinned in pyproject.toml,
    and tests/unit/test_caller.py fails if the hook is gone or no longer reached. Should it
    vanish anyway, every caller has no sender and is refused (`identify`): it fails closed.
    """

    def _make_method_handler(self, interface: Any, method: Any) -> Any:
        inner = super()._make_method_handler(interface, method)

        def handler(msg: Message, send_reply: Any) -> None:
            token = _sender.set(msg.sender or "")
            try:
                inner(msg, send_reply)
            finally:
                _sender.reset(token)

        return handler

    # dbus-fast's aio bus returns a Future from send(), where its compiled base says None.
    def send(self, msg: Message) -> asyncio.Future[None]:  # type: ignore[override]
        """Nothing once snitchd has left the bus: at stop, the last rows (their rates) are
        flushed and a rule change coalesced a moment earlier is told after the disconnect;
        a signal then has no one to reach, and sending it raised out of the loop."""
        if not self.connected:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        sent: asyncio.Future[None] = super().send(msg)
        return sent


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: their bus connection, their uid, and whether they are an admin."""

    name: str
    uid: int
    admin: bool

    @property
    def own_only(self) -> int | None:
        """The uid whose flows this caller may see; None (all of them) for an admin."""
        return None if self.admin else self.uid


_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("snitch_dbus_caller")


def current_caller() -> Caller:
    """The caller of the D-Bus method running in this task (set by `handled`)."""
    return _caller.get()


class _Service(Protocol):
    gate: QueryGate
    pace: CallPace

    @property
    def admin_group(self) -> str: ...

    @property
    def calls_per_user(self) -> int: ...

    async def identify(self) -> Caller: ...


M = TypeVar("M", bound=Callable[..., Awaitable[Any]])

# An error's text, at most: errors may quote what the caller sent, and a reply over the bus's
# message limit (32 MiB on the system bus) made dbus-daemon drop snitchd's connection.
MAX_ERROR_CHARS = 8192


def _bounded(message: str) -> str:
    if len(message) <= MAX_ERROR_CHARS:
        return message
    return message[:MAX_ERROR_CHARS] + f"… ({len(message) - MAX_ERROR_CHARS} characters more)"


def handled(*, admin: str | None = None, query: bool = False) -> Callable[[M], M]:
    """The one shape of every D-Bus method: identify the caller; pace a user's calls
    (`callpace`); refuse one who is not an admin where `admin` names what needs it; hold the
    caller's one query slot where `query`; turn a `SnitchError` into its named D-Bus error, and
    anything else into a traceback in the journal and a generic error for the caller (a
    traceback tells a stranger too much).

    Goes under `@dbus_method()`, which reads the signature through `functools.wraps`.
    """

    def wrap(fn: M) -> M:
        @functools.wraps(fn)
        async def method(self: _Service, *args: Any) -> Any:
            try:
                who = await self.identify()
                await self.pace.take(who.uid, self.calls_per_user)
                if admin is not None and not who.admin:
                    raise NotAuthorized(
                        f"not authorized to {admin}: uid {who.uid} is neither root nor in group "
                        f"{self.admin_group!r} (try: sudo snitchctl ...)"
                    )
                token = _caller.set(who)
                try:
                    if not query:
                        return await fn(self, *args)
                    with self.gate.enter(who.name, who.uid):
                        return await fn(self, *args)
                finally:
                    _caller.reset(token)
            except SnitchError as exc:
                raise DBusError(DBUS_ERROR_PREFIX + exc.code, _bounded(exc.message)) from None
            except Exception:
                log.exception("D-Bus method %s failed unexpectedly", fn.__name__)
                raise DBusError(
                    DBUS_ERROR_PREFIX + "Failed", "internal error: see the snitchd log"
                ) from None

        return cast(M, method)

    return wrap
