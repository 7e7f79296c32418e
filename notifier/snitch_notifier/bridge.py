"""The agent's bus side: dbus-fast on its own asyncio loop in a worker thread, talking to Qt
through signals.

Why a thread and not one loop: `PySide6.QtAsyncio` (the Qt-driven asyncio loop) is not part of
PySide6-Essentials 6.12 — `import PySide6.QtAsyncio` raises ModuleNotFoundError in our venv —
and it is a technical preview whose loop must also serve dbus-fast's `loop.add_reader` socket
I/O. A plain asyncio loop in one thread and Qt's loop in the GUI thread need no third-party
glue, and a slow or blocked bus call can never freeze the window. The crossing is explicit:
GUI → worker with `asyncio.run_coroutine_threadsafe`, worker → GUI by emitting this QObject's
signals, which Qt delivers as queued calls in the receiver's (GUI) thread — connect them with
`Qt.ConnectionType.QueuedConnection` to say so. Records only cross, never dicts or Variants.

The bridge stays registered (`registration.stay_registered`: waits for snitchd, registers
again after it restarts) and reconnects when the bus itself goes away. It decides nothing and
holds no prompt state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from PySide6.QtCore import QObject, Signal

from snitch_common.agent import AgentService
from snitch_common.answers import Answer, left_open
from snitch_common.client import Client
from snitch_common.errors import DaemonUnreachable, SnitchError
from snitch_notifier.registration import Listener, stay_registered
from snitch_notifier.shields import Shield, shield_path

__all__ = ["AgentBridge", "LogRow", "RuleRow"]

log = logging.getLogger(__name__)

_MAX_RETRY = 60.0  # seconds between attempts to reach a bus that keeps failing


@dataclass(frozen=True, slots=True)
class RuleRow:
    id: int
    text: str
    hits: int
    last_hit: float | None
    origin: str
    note: str = ""
    enabled: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RuleRow:
        return cls(
            int(d["id"]),
            str(d["text"]),
            int(d.get("hits", 0)),
            d.get("last_hit"),
            str(d.get("origin", "")),
            str(d.get("note", "")),
            bool(d.get("enabled", True)),
        )

    @property
    def from_file(self) -> str | None:
        """The rules.d file this rule comes from (snitchd refuses to change it), or None."""
        return self.origin[5:] if self.origin.startswith("file:") else None


@dataclass(frozen=True, slots=True)
class LogRow:
    """One decision of the connection log, as the "recent connections" window shows it."""

    time: float
    exe: str | None
    pid: int | None
    proto: str
    dst: str
    dport: int | None
    action: str
    reason: str

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LogRow:
        return cls(
            float(d["time"]),
            d.get("exe"),
            d.get("pid"),
            str(d.get("proto", "")),
            str(d.get("dst", "")),
            d.get("dport"),
            str(d.get("action", "")),
            str(d.get("reason", "")),
        )


class AgentBridge(QObject):
    """Owns the worker thread; every public method may be called from the GUI thread."""

    registered = Signal(int)  # the uid snitchd routes prompts of
    prompt_arrived = Signal(object)  # PromptView
    prompt_cancelled = Signal(object, str)  # prompt id, reason
    alert_arrived = Signal(object)  # dict: kind, message, time, uid, exe
    daemon_gone = Signal(str)  # why every shown prompt is void
    answered = Signal(object, object)  # Answer, rule id (-1: once)
    # Answer, why snitchd did not take it, whether it still holds the prompt (`left_open`)
    answer_failed = Signal(object, str, bool)
    deferred = Signal(int, float)  # prompt id, seconds snitchd now holds it
    defer_failed = Signal(int, str)  # prompt id, why snitchd did not hold it
    rules_listed = Signal(object)  # list[RuleRow]
    rule_deleted = Signal(object)  # rule id
    rule_changed = Signal(str, object)  # what ("add", "edit", "enable", "disable"), RuleRow
    log_listed = Signal(object)  # list[LogRow]
    failed = Signal(str, str)  # request ("connect", "answer", "rules", …), message people read
    mode_changed = Signal(object)  # dict: mode, describe, until, previous, may_switch (issue 17)

    def __init__(
        self,
        connect: Callable[[], Awaitable[Client]] = Client.connect,
        retry_seconds: float = 5.0,
    ) -> None:
        super().__init__()
        self._connect = connect
        self._retry = retry_seconds
        self._thread = threading.Thread(target=self._run, name="snitch-bus", daemon=True)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._client: Client | None = None
        self._notifications: MessageBus | None = None  # for notifications, opened when first needed

    # -- life cycle (GUI thread) ----------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def stop(self, timeout: float = 5.0) -> None:
        """Leave the bus (snitchd then gives this agent's prompts to another, or the default)."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and self._thread.is_alive():
            loop.call_soon_threadsafe(stop.set)
            self._thread.join(timeout)

    # -- requests (GUI thread) ------------------------------------------------------------------
    def answer(self, answer: Answer) -> None:
        self._submit("answer", self._answer(answer))

    def defer(self, prompt_id: int) -> None:
        """Ask snitchd to hold a prompt up to its prompt_hold_max (a person is on it)."""
        self._submit("defer", self._defer(prompt_id))

    def notify(self, summary: str, body: str) -> None:
        """A desktop notification (where there is no tray to show a balloon)."""
        self._submit("notify", self._notify(summary, body))

    def list_rules(self) -> None:
        self._submit("rules", self._list_rules())

    def delete_rule(self, rule_id: int) -> None:
        self._submit("delete", self._delete_rule(rule_id))

    def add_rule(self, text: str, note: str = "") -> None:
        self.change_rule("add", lambda c: c.add_rule_with_note(text, note))

    def edit_rule(self, rule_id: int, text: str, note: str | None) -> None:
        self.change_rule("edit", lambda c: c.edit_rule(rule_id, text, note))

    def set_rule_enabled(self, rule_id: int, enabled: bool) -> None:
        what = "enable" if enabled else "disable"
        self.change_rule(what, lambda c: c.set_rule_enabled(rule_id, enabled))

    def change_rule(self, what: str, call: Callable[[Client], Awaitable[dict[str, Any]]]) -> None:
        """One rule change; `rule_changed` (what, the rule after it) or `failed` (what, why)."""
        self._submit(what, self._change_rule(what, call))

    async def _change_rule(
        self, what: str, call: Callable[[Client], Awaitable[dict[str, Any]]]
    ) -> None:
        row = RuleRow.from_dict(await call(self._need_client()))
        log.info("rule changed what=%s id=%d", what, row.id)
        self.rule_changed.emit(what, row)

    def recent_log(self, limit: int = 200) -> None:
        self._submit("log", self._recent_log(limit))

    def get_mode(self) -> None:
        self._submit("mode", self._get_mode())

    def set_mode(self, mode: str, seconds: float | None = None) -> None:
        """Switch the machine's mode (admins only: otherwise `failed` says why)."""
        self._submit("mode", self._set_mode(mode, seconds))

    async def _get_mode(self) -> None:
        self.mode_changed.emit(await self._need_client().get_mode())

    async def _set_mode(self, mode: str, seconds: float | None) -> None:
        state = await self._need_client().set_mode(mode, seconds)
        log.info("mode set mode=%s seconds=%s", mode, seconds)
        self.mode_changed.emit(state | {"may_switch": True})

    def _submit(self, what: str, coro: Coroutine[Any, Any, None]) -> None:
        loop = self._loop
        if loop is None or not self._thread.is_alive():
            coro.close()
            self.failed.emit(what, "the notifier is not connected to the system bus")
            return
        asyncio.run_coroutine_threadsafe(self._guard(what, coro), loop)

    async def _guard(self, what: str, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except SnitchError as exc:
            log.warning("request failed what=%s: %s", what, exc.message)
            self.failed.emit(what, exc.message)
        except Exception:
            log.exception("request failed unexpectedly what=%s", what)
            self.failed.emit(what, "internal error: see the notifier's log")

    def _need_client(self) -> Client:
        if self._client is None:
            raise DaemonUnreachable("not connected to snitchd (is it running?)")
        return self._client

    async def _answer(self, answer: Answer) -> None:
        try:
            rule_id = await self._need_client().answer_prompt(answer)
        except SnitchError as exc:
            self.answer_failed.emit(answer, exc.message, left_open(exc))
            raise
        log.info(
            "answered prompt=%d action=%s duration=%s scope=%s rule=%d",
            answer.prompt_id,
            answer.action.value,
            answer.duration,
            answer.scope.value,
            rule_id,
        )
        self.answered.emit(answer, rule_id)

    async def _defer(self, prompt_id: int) -> None:
        try:
            left = await self._need_client().defer_prompt(prompt_id)
        except SnitchError as exc:
            self.defer_failed.emit(prompt_id, exc.message)
            raise
        log.info("prompt=%d held for %.0f s more", prompt_id, left)
        self.deferred.emit(prompt_id, left)

    async def _notify(self, summary: str, body: str) -> None:
        if self._notifications is None:
            try:
                self._notifications = await MessageBus(bus_type=BusType.SESSION).connect()
            except Exception as exc:
                raise SnitchError(f"cannot show a notification: no session bus: {exc}") from None
        reply = await self._notifications.call(
            Message(
                destination="org.freedesktop.Notifications",
                path="/org/freedesktop/Notifications",
                interface="org.freedesktop.Notifications",
                member="Notify",
                signature="susssasa{sv}i",
                body=[
                    "snitch",
                    0,
                    shield_path(Shield.ASKING),
                    summary,
                    body,
                    [],
                    {},
                    -1,
                ],
            )
        )
        if reply is None or reply.message_type is MessageType.ERROR:
            raise SnitchError(f"cannot show a notification: {reply and reply.body}")

    async def _list_rules(self) -> None:
        rows = await self._need_client().list_rules()
        self.rules_listed.emit([RuleRow.from_dict(r) for r in rows])

    async def _delete_rule(self, rule_id: int) -> None:
        await self._need_client().delete_rule(rule_id)
        log.info("rule deleted id=%d", rule_id)
        self.rule_deleted.emit(rule_id)

    async def _recent_log(self, limit: int) -> None:
        rows = await self._need_client().log({"limit": Variant("x", limit)})
        self.log_listed.emit([LogRow.from_dict(r) for r in rows])

    # -- the worker thread ----------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        delay = self._retry
        while not self._stop.is_set():
            try:
                client = await self._connect()
                delay = self._retry
                try:
                    await self._session(client)
                finally:
                    self._client = None
                    client.close()
            except SnitchError as exc:
                log.warning("no bus connection: %s (again in %.0f s)", exc.message, delay)
                self.failed.emit("connect", exc.message)
            except Exception:
                log.exception("bus connection failed unexpectedly (again in %.0f s)", delay)
                self.failed.emit("connect", "internal error: see the notifier's log")
            if not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(delay * 2, _MAX_RETRY)
        if self._notifications is not None:
            self._notifications.disconnect()

    async def _session(self, client: Client) -> None:
        assert self._stop is not None
        self._client = client
        service = AgentService(
            self.prompt_arrived.emit, self.prompt_cancelled.emit, self.alert_arrived.emit
        )
        try:
            # Every later change of mode, whoever makes it (a signal to everyone).
            await client.watch_mode(self.mode_changed.emit)
        except SnitchError as exc:
            log.warning("mode changes will not be shown: %s", exc.message)
        listener = Listener(
            registered=self.registered.emit,
            failed=lambda message: self.failed.emit("register", message),
            daemon_gone=self.daemon_gone.emit,
        )
        await stay_registered(client, service, listener, self._stop)
