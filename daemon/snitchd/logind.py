"""Which logind session an agent sits in, and whether it is the one a person sits at now.

Prompts go to the agent of the user's *active graphical* session first (issue 15: a forgotten
`snitchctl agent` in an SSH session took the desktop's prompts). logind (`org.freedesktop.login1`
on the system bus, owned by root) knows: `GetSessionByPID` gives the session of an agent's pid;
an agent started by a systemd user unit sits in no session, and then the user's display session
(`User.Display`, what `sd_uid_get_display` reads) stands for it. A session counts as active when
logind says it is `Active` and has a `Seat` (a person at a screen and keyboard, not SSH).

The broker routes on the packet loop and cannot wait for the bus, so the state of each agent's
session is kept here and read from memory (`active`); it is read when an agent registers and
again whenever logind signals that a session's properties changed (a signal only triggers a
re-read from logind by name: anyone may send a signal, only root may own logind's name).
Without logind on the bus, nothing is known and `active` says False for every session path;
the cgroup fallback (`agents.session_of`, /run/systemd/sessions) then applies.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from snitch_common.bus import broadcast

__all__ = ["LOGIND", "Logind", "SessionState"]

log = logging.getLogger(__name__)

LOGIND = "org.freedesktop.login1"
_MANAGER = "/org/freedesktop/login1"
_SESSION_IFACE = "org.freedesktop.login1.Session"
_MAX_SESSIONS = 1024  # sessions followed at most (agents are few; bounded all the same)
_CALL_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class SessionState:
    """What logind says of one session: its id, Active, its seat ("" none), type, remote."""

    id: str
    active: bool
    seat: str
    type: str
    remote: bool

    @property
    def at_seat(self) -> bool:
        """Active and at a seat: the session a person sits at now."""
        return self.active and bool(self.seat)

    def describe(self) -> str:
        where = f"seat {self.seat}" if self.seat else ("remote" if self.remote else "no seat")
        state = "active" if self.active else "inactive"
        return f"session {self.id} ({self.type or 'tty'}, {where}, {state})"


class Logind:
    def __init__(self, bus: MessageBus) -> None:
        self._bus = bus
        self._sessions: dict[str, SessionState] = {}  # object path -> state
        self._tasks: set[asyncio.Task[None]] = set()
        self._reading: dict[str, bool] = {}  # sessions being read -> read again after
        self.on_change: list[Callable[[], None]] = []  # told when a session's state changed
        bus.add_message_handler(self._on_message)

    async def watch(self) -> None:
        """Ask the bus for logind's PropertiesChanged signals (of any session)."""
        rule = (
            f"type='signal',sender='{LOGIND}',interface='org.freedesktop.DBus.Properties',"
            "member='PropertiesChanged',path_namespace='/org/freedesktop/login1/session'"
        )
        await self._call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "AddMatch",
            "s",
            [rule],
        )

    def active(self, path: str) -> bool:
        state = self._sessions.get(path)
        return state is not None and state.at_seat

    def state(self, path: str) -> SessionState | None:
        return self._sessions.get(path)

    async def session_of(self, pid: int, uid: int) -> str | None:
        """The session path of `pid`, else the user's display session; None when logind
        knows neither (or does not run)."""
        reply = await self._call(
            LOGIND, _MANAGER, "org.freedesktop.login1.Manager", "GetSessionByPID", "u", [pid]
        )
        path = str(reply.body[0]) if reply is not None else None
        if path is None:
            user = await self._call(
                LOGIND, _MANAGER, "org.freedesktop.login1.Manager", "GetUser", "u", [uid]
            )
            if user is not None:
                display = await self._get(
                    str(user.body[0]), "org.freedesktop.login1.User", "Display"
                )
                if isinstance(display, list | tuple) and len(display) == 2 and display[1] != "/":
                    path = str(display[1])
        if path is not None:
            await self.refresh(path)
        return path

    async def refresh(self, path: str) -> None:
        """Read the session's state again from logind."""
        reply = await self._call(
            LOGIND, path, "org.freedesktop.DBus.Properties", "GetAll", "s", [_SESSION_IFACE]
        )
        if reply is None:
            self._sessions.pop(path, None)
            return
        props = {k: v.value for k, v in reply.body[0].items()}
        seat = props.get("Seat")
        state = SessionState(
            str(props.get("Id", path.rsplit("/", 1)[-1])),
            bool(props.get("Active", False)),
            str(seat[0]) if isinstance(seat, list | tuple) and seat else "",
            str(props.get("Type", "")),
            bool(props.get("Remote", False)),
        )
        old = self._sessions.get(path)
        if old is None and len(self._sessions) >= _MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        self._sessions[path] = state
        if old != state:
            log.info("logind %s: %s", path, state.describe())
            for changed in self.on_change:
                changed()

    def _on_message(self, msg: Message) -> None:
        if (
            msg.message_type is not MessageType.SIGNAL
            or msg.member != "PropertiesChanged"
            or msg.path not in self._sessions
            or not broadcast(msg)  # logind's own, by the match rule's sender
        ):
            return
        # It only makes us read logind again, one read at a time per session (a signal during
        # a read means one more read after it).
        path = msg.path
        if path in self._reading:
            self._reading[path] = True
            return
        self._reading[path] = False
        task = asyncio.get_running_loop().create_task(self._reread(path))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reread(self, path: str) -> None:
        try:
            while True:
                await self.refresh(path)
                if not self._reading.get(path):
                    return
                self._reading[path] = False
        finally:
            self._reading.pop(path, None)

    async def _get(self, dest_path: str, iface: str, prop: str) -> Any:
        reply = await self._call(
            LOGIND, dest_path, "org.freedesktop.DBus.Properties", "Get", "ss", [iface, prop]
        )
        return reply.body[0].value if reply is not None else None

    async def _call(
        self, dest: str, path: str, iface: str, member: str, sig: str, body: list[Any]
    ) -> Message | None:
        msg = Message(
            destination=dest, path=path, interface=iface, member=member, signature=sig, body=body
        )
        try:
            reply = await asyncio.wait_for(self._bus.call(msg), _CALL_TIMEOUT)
        except Exception as exc:  # logind absent, or gone
            log.debug("logind %s failed: %s", member, exc)
            return None
        if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
            return None
        return reply
