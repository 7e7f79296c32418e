"""The notifications fallback against a real dbus-daemon (a private session bus started here)
and a small org.freedesktop.Notifications server (`notifyfake.py`) that records Notify and
CloseNotification calls and emits ActionInvoked as a person's click would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from dbus_fast.aio import MessageBus

from snitch_common.answers import Action, Answer, Scope
from snitch_common.errors import NotAuthorized, SnitchError, StoreError
from snitch_notifier.fallback import ACTIONS, NotificationPrompter
from snitch_notifier.identity import AppIdentity

from .notifyfake import FakeNotifications, SessionBus

NOW = 1_700_000_000.0


@pytest.fixture
def session_bus() -> Iterator[str]:
    bus = SessionBus()
    try:
        yield bus.address
    finally:
        bus.stop()


@pytest.fixture
async def server(session_bus: str) -> AsyncIterator[FakeNotifications]:
    bus = await MessageBus(bus_address=session_bus).connect()
    fake = FakeNotifications()
    bus.export("/org/freedesktop/Notifications", fake)
    await bus.request_name("org.freedesktop.Notifications")
    try:
        yield fake
    finally:
        bus.disconnect()


@pytest.fixture
async def prompter(session_bus: str, server: FakeNotifications) -> AsyncIterator[Any]:
    bus = await MessageBus(bus_address=session_bus).connect()
    answers: list[Answer] = []
    refusals: list[SnitchError] = []  # what snitchd says to the next answers, in turn
    got = asyncio.Event()

    async def answer(a: Answer) -> None:
        answers.append(a)
        got.set()
        if refusals:
            raise refusals.pop(0)

    identify = lambda exe: AppIdentity("Sync tool", "/usr/share/icons/sync.png")  # noqa: E731
    p = NotificationPrompter(bus, answer, clock=lambda: NOW, identify=identify)
    p.answers, p.got, p.refusals = answers, got, refusals  # type: ignore[attr-defined]
    await p.start()
    try:
        yield p
    finally:
        await p.drain()
        bus.disconnect()


async def _until(predicate: Any, timeout: float = 5) -> None:
    async def wait() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), timeout)


async def test_a_prompt_becomes_a_notification_with_allow_and_deny(
    prompter, server, prompt_factory
) -> None:
    prompter.on_prompt(prompt_factory(7, deadline=NOW + 25))
    await prompter.drain()
    [shown] = server.notified
    assert shown["actions"] == ACTIONS == ["allow", "Allow", "deny", "Deny"]
    assert shown["summary"] == "Sync tool wants to connect to updates.example.org"
    assert shown["icon"] == "/usr/share/icons/sync.png"
    assert shown["body"].splitlines() == [
        "/usr/bin/python3.11  (pid 4242, user alice)",
        "→ updates.example.org (203.0.113.7) port 443/tcp",
        "Allow or Deny makes a rule for this host and port, forever.",
        "No answer in 25 s: deny.",
    ]
    assert shown["timeout"] == 25_000
    assert shown["hints"] == {"urgency": 2, "desktop-entry": "snitch-notifier"}
    assert prompter.shown == {101: 7}


@pytest.mark.parametrize(("key", "action"), [("allow", Action.ALLOW), ("deny", Action.DENY)])
async def test_a_button_answers_the_prompt(prompter, server, prompt_factory, key, action) -> None:
    prompter.on_prompt(prompt_factory(7))
    await prompter.drain()
    server.ActionInvoked(101, key)
    await asyncio.wait_for(prompter.got.wait(), 5)
    await prompter.drain()
    assert prompter.answers == [Answer(7, action, "forever", Scope("exact"))]
    assert prompter.shown == {}


async def test_an_unverified_app_is_answered_once(prompter, server, prompt_factory) -> None:
    """snitchd makes no lasting rule for it (a rule would name another file's path): the
    buttons answer for this connection, as the popup preselects, and the body says so. A
    forever answer was refused, and the prompt waited for the default with nothing shown."""
    prompter.on_prompt(prompt_factory(7, verified=False))
    await prompter.drain()
    assert "Allow or Deny answers for this connection only." in server.notified[0]["body"]
    server.ActionInvoked(101, "allow")
    await asyncio.wait_for(prompter.got.wait(), 5)
    await prompter.drain()
    assert prompter.answers == [Answer(7, Action.ALLOW, "once", Scope("exact"))]


async def test_a_refused_answer_asks_again_while_snitchd_holds_the_prompt(
    prompter, server, prompt_factory
) -> None:
    """A refusal that leaves the prompt open (here: the store was locked) shows it again with
    the reason; one that ended it (answered elsewhere, timed out) shows nothing more."""
    locked = "cannot write to rule store: database is locked"
    prompter.refusals[:] = [StoreError(locked), NotAuthorized("no open prompt 7")]
    prompter.on_prompt(prompt_factory(7))
    await prompter.drain()
    server.ActionInvoked(101, "allow")
    await _until(lambda: len(server.notified) == 2)
    await prompter.drain()
    again = server.notified[1]
    assert again["body"].splitlines()[0] == f"Not applied: {locked}. Answer again."
    assert again["actions"] == ACTIONS and prompter.shown == {102: 7}
    server.ActionInvoked(102, "deny")
    await _until(lambda: len(prompter.answers) == 2)
    await asyncio.sleep(0.2)
    await prompter.drain()
    assert len(server.notified) == 2 and prompter.shown == {}


async def test_a_click_forged_by_another_program_answers_nothing(
    prompter, server, session_bus, prompt_factory
) -> None:
    """Any program of the user may send ActionInvoked on the session bus. Before, one that
    was not the notification server answered the prompt (malware allowing its own connection,
    unseen); now only the server's signals are clicks."""
    prompter.on_prompt(prompt_factory(7))
    await prompter.drain()
    forger_bus = await MessageBus(bus_address=session_bus).connect()
    try:
        forger = FakeNotifications()
        forger_bus.export("/org/freedesktop/Notifications", forger)
        forger.ActionInvoked(101, "allow")
        await asyncio.sleep(0.3)
        await prompter.drain()
        assert prompter.answers == [] and prompter.shown == {101: 7}
        server.ActionInvoked(101, "deny")  # the server's own click still answers
        await asyncio.wait_for(prompter.got.wait(), 5)
        assert [a.action for a in prompter.answers] == [Action.DENY]
    finally:
        forger_bus.disconnect()


async def test_snitchd_cancel_closes_the_notification(prompter, server, prompt_factory) -> None:
    for i in (1, 2):
        prompter.on_prompt(prompt_factory(i, host=f"h{i}.example.org"))
        await prompter.drain()
    prompter.on_cancel(2, "default: timed out")
    await prompter.drain()
    assert server.closed == [102]
    assert prompter.shown == {101: 1}


async def test_an_expired_prompt_leaves_a_notification(prompter, server, prompt_factory) -> None:
    """Issue 15: a prompt that got the default says so, without buttons; one that snitchd
    ended otherwise (another agent answered) goes quietly."""
    for i in (1, 2):
        prompter.on_prompt(prompt_factory(i, host=f"h{i}.example.org"))
        await prompter.drain()
    prompter.on_cancel(1, "default: timed out")
    prompter.on_cancel(2, "answered by another agent")
    await prompter.drain()
    assert [(n["summary"], n["actions"]) for n in server.notified[2:]] == [
        ("Sync tool: expired: denied by default", [])
    ]
    assert server.notified[2]["body"] == (
        "h1.example.org (203.0.113.7) port 443/tcp: no answer in time (default: timed out)."
    )


async def test_closing_without_a_button_and_foreign_actions_answer_nothing(
    prompter, server, prompt_factory
) -> None:
    """Dismissed: snitchd's timeout decides. Another app's notification ids are not ours."""
    prompter.on_prompt(prompt_factory(1))
    await prompter.drain()
    server.ActionInvoked(999, "allow")
    server.NotificationClosed(101, 2)
    await _until(lambda: not prompter.shown)
    server.ActionInvoked(101, "allow")
    await asyncio.sleep(0.2)
    await prompter.drain()
    assert prompter.answers == []
