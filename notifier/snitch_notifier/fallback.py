"""Asking without a window: desktop notifications with Allow and Deny buttons.

When Qt cannot start (no display, a broken display, PySide6 not installed) the notifier still
registers as the user's agent and shows each prompt through `org.freedesktop.Notifications` on
the session bus (the Desktop Notifications spec: `Notify` with an actions list, the
`ActionInvoked` and `NotificationClosed` signals). A notification has room for two buttons, so
an answer has the popup's default duration and scope (forever, this host and port) and the body
says so; anything finer is for the popup or `snitchctl agent`. A notification closed without a
button leaves the prompt to snitchd's timeout and default. Everything runs on one asyncio loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from snitch_common.agent import AgentService
from snitch_common.answers import Action, Answer, default_duration, left_open
from snitch_common.bus import PromptView, disconnected
from snitch_common.client import Client
from snitch_common.errors import SnitchError
from snitch_notifier.identity import GENERIC_ICON, AppIdentity, desktop_identity
from snitch_notifier.registration import Listener, stay_registered
from snitch_notifier.shields import Shield, shield_path

__all__ = ["ACTIONS", "NotificationPrompter", "run_notifications"]

log = logging.getLogger(__name__)

NOTIFICATIONS = "org.freedesktop.Notifications"
NOTIFICATIONS_PATH = "/org/freedesktop/Notifications"
ACTIONS = ["allow", "Allow", "deny", "Deny"]  # key, label pairs, as the spec lays them out
_URGENT = 2
_SIGNALS = ("ActionInvoked", "NotificationClosed")
_SHIELD = shield_path(Shield.ASKING)  # our own, for an app without an icon of its own


class NotificationPrompter:
    """Prompts → notifications, button presses → answers.

    Args:
        answer: sends an answer to snitchd (`Client.answer_prompt` in the real agent).
    """

    def __init__(
        self,
        bus: MessageBus,
        answer: Callable[[Answer], Awaitable[None]],
        clock: Callable[[], float] = time.time,
        identify: Callable[[str | None], AppIdentity] = desktop_identity,
    ) -> None:
        self.bus = bus
        self._answer = answer
        self._clock = clock
        self._identify = identify
        self.shown: dict[int, int] = {}  # notification id → prompt id
        self._prompts: dict[int, PromptView] = {}  # prompt id → prompt, while it is shown
        self._tasks: set[asyncio.Task[None]] = set()
        # The notification server's unique bus name, as its Notify replies say: only its
        # signals are clicks. Any program of the user can send ActionInvoked ("allow" on a
        # guessed id, to us alone or to all); taken from anyone, malware answered its own
        # prompt without touching the screen.
        self._server: str | None = None

    async def start(self) -> None:
        """Listen for the server's button and close signals (they are broadcast)."""
        self.bus.add_message_handler(self._on_message)
        for member in _SIGNALS:
            await self._call_bus(
                "AddMatch", f"type='signal',interface='{NOTIFICATIONS}',member='{member}'"
            )

    def on_prompt(self, prompt: PromptView) -> None:
        self._spawn(self._notify(prompt), f"notify-{prompt.id}")

    def on_cancel(self, prompt_id: int, reason: str) -> None:
        """snitchd ended the prompt: its notification goes; one that got the default leaves a
        notification saying so (issue 15: nothing is decided unseen)."""
        for notification, shown in list(self.shown.items()):
            if shown == prompt_id:
                del self.shown[notification]
                self._spawn(self._close(notification), f"close-{notification}")
        prompt = self._prompts.pop(prompt_id, None)
        if prompt is not None and reason.startswith("default:"):
            self._spawn(self._expired(prompt, reason), f"expired-{prompt_id}")

    def forget_all(self) -> None:
        """snitchd left: its prompts are void, so their notifications go."""
        for notification in list(self.shown):
            del self.shown[notification]
            self._spawn(self._close(notification), f"close-{notification}")
        self._prompts.clear()

    async def drain(self) -> None:
        """Wait for notifications and answers in flight (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("notification %s failed: %s", task.get_name(), task.exception())

    async def _notify(self, prompt: PromptView, refused: str = "") -> None:
        """`refused`: why snitchd did not take the last answer to it (it asks again)."""
        app = self._identify(prompt.exe)
        left = max(1, round(prompt.deadline - self._clock()))
        if _duration(prompt) == "once":  # no lasting rule can name what it runs
            what = "Allow or Deny answers for this connection only."
        else:
            what = "Allow or Deny makes a rule for this host and port, forever."
        body = "\n".join(
            ([f"Not applied: {refused}. Answer again."] if refused else [])
            + [
                f"{prompt.who}  (pid {prompt.pid}, user {prompt.user or prompt.uid})",
                f"→ {prompt.destination}",
                what,
                f"No answer in {left} s: {prompt.default_action}.",
            ]
        )
        notification = await self._show(
            app,
            f"{app.name} wants to connect to {prompt.host or prompt.dst}",
            body,
            ACTIONS,
            {"urgency": Variant("y", _URGENT)},
            left * 1000,
        )
        self.shown[notification] = prompt.id
        self._prompts[prompt.id] = prompt
        log.info("prompt shown as notification prompt=%d id=%d", prompt.id, notification)

    async def _expired(self, prompt: PromptView, reason: str) -> None:
        app = self._identify(prompt.exe)
        past = {"allow": "allowed", "deny": "denied", "reject": "rejected"}
        done = past.get(prompt.default_action, prompt.default_action)
        summary = f"{app.name}: expired: {done} by default"
        await self._show(app, summary, f"{prompt.destination}: no answer in time ({reason}).")

    async def _show(
        self,
        app: AppIdentity,
        summary: str,
        body: str,
        actions: list[str] | None = None,
        hints: dict[str, Variant] | None = None,
        timeout_ms: int = -1,
    ) -> int:
        """`Notify` with the app's icon (our shield for one without); the notification's id."""
        reply = await self._call(
            NOTIFICATIONS,
            NOTIFICATIONS_PATH,
            "Notify",
            "susssasa{sv}i",
            [
                "snitch",
                0,
                app.icon if app.icon != GENERIC_ICON else _SHIELD,
                summary,
                body,
                actions or [],
                {**(hints or {}), "desktop-entry": Variant("s", "snitch-notifier")},
                timeout_ms,
            ],
        )
        self._server = reply.sender
        return int(reply.body[0])

    async def _close(self, notification: int) -> None:
        await self._call(
            NOTIFICATIONS, NOTIFICATIONS_PATH, "CloseNotification", "u", [notification]
        )

    async def _call(
        self, service: str, path: str, member: str, signature: str, body: list[Any]
    ) -> Message:
        """A method of `service`'s interface of the same name on the session bus; its reply.
        Raises SnitchError on an error reply or none."""
        reply = await self.bus.call(
            Message(
                destination=service,
                path=path,
                interface=service,
                member=member,
                signature=signature,
                body=body,
            )
        )
        _check(reply, member)
        assert reply is not None
        return reply

    def _on_message(self, msg: Message) -> None:
        if msg.message_type is not MessageType.SIGNAL or msg.interface != NOTIFICATIONS:
            return
        if msg.sender is None or msg.sender != self._server:
            log.warning("notification signal %s from %s, not the server: ignored", msg.member,
                        msg.sender)  # fmt: skip
            return
        notification = int(msg.body[0])
        prompt_id = self.shown.pop(notification, None)
        if prompt_id is None or msg.member != "ActionInvoked":
            return
        prompt = self._prompts.pop(prompt_id, None)
        key = str(msg.body[1])
        if prompt is None:  # snitchd ended it meanwhile
            return
        if key not in ("allow", "deny"):
            log.warning("unknown notification action %r: leaving prompt=%d", key, prompt_id)
            return
        answer = Answer(prompt_id, Action(key), _duration(prompt))
        self._spawn(self._send(prompt, answer), f"answer-{prompt_id}")

    async def _send(self, prompt: PromptView, answer: Answer) -> None:
        try:
            await self._answer(answer)
        except SnitchError as exc:
            log.warning("not answered prompt=%d: %s", answer.prompt_id, exc.message)
            if left_open(exc):  # snitchd still holds it: ask again, saying why
                await self._notify(prompt, exc.message)

    async def _call_bus(self, member: str, arg: str) -> None:
        await self._call("org.freedesktop.DBus", "/org/freedesktop/DBus", member, "s", [arg])


def _duration(prompt: PromptView) -> str:
    """The popup's preselected duration: `once` where snitchd makes no lasting rule."""
    return default_duration(prompt.verified, prompt.tampered)


def _check(reply: Message | None, what: str) -> None:
    if reply is None or reply.message_type is MessageType.ERROR:
        detail: Any = reply.body if reply is not None else "no reply"
        raise SnitchError(f"notification server: {what} failed: {detail}")


async def run_notifications() -> int:
    """The whole agent without a window: system bus to snitchd, session bus to notifications."""
    try:
        session = await MessageBus(bus_type=BusType.SESSION).connect()
    except Exception as exc:  # dbus-fast raises anything from KeyError to AuthError here
        log.error(
            "no session bus for notifications either (DBUS_SESSION_BUS_ADDRESS=%s, %s: %s): "
            "nothing can show prompts here; use `snitchctl agent` in a terminal",
            os.environ.get("DBUS_SESSION_BUS_ADDRESS", "unset"),
            type(exc).__name__,
            exc,
        )
        return 1
    try:
        client = await Client.connect()
    except SnitchError as exc:
        session.disconnect()
        log.error("%s: cannot ask about connections", exc.message)
        return 1

    async def send(answer: Answer) -> None:
        rule_id = await client.answer_prompt(answer)
        log.info(
            "answered prompt=%d action=%s rule=%d", answer.prompt_id, answer.action.value, rule_id
        )

    prompter = NotificationPrompter(session, send)
    await prompter.start()
    service = AgentService(prompter.on_prompt, prompter.on_cancel)
    listener = Listener(
        registered=lambda uid: log.info("prompts of uid=%d go to desktop notifications", uid),
        failed=lambda message: None,  # already logged; we wait for snitchd
        daemon_gone=lambda reason: prompter.forget_all(),
    )
    stop = asyncio.Event()
    session_gone = disconnected(session)
    session_gone.add_done_callback(lambda _: stop.set())
    try:
        await stay_registered(client, service, listener, stop)
    finally:
        session_gone.cancel()
        client.close()
        session.disconnect()
    log.warning("a bus went away: stopping (the service manager restarts the notifier)")
    return 1
