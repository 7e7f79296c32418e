"""Issue 15, as a person would meet it: the countdown stops while they choose, a prompt is
never replaced under an open menu, prompts can wait in the tray, an expired one leaves a
trace that can become a rule, and five prompts at once are all answered.

Driven with real mouse clicks and keys (pytest-qt) on the offscreen window; time is the
fixture's hand-moved clock; snitchd's reply to DeferPrompt is the fixture's `hold` (the lab
test in tests/integration/test_prompts_ui.py checks the real one).
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, QTimer

from snitch_common.answers import Action, Answer, Scope
from snitch_notifier.pending import MIN_LEFT, RESUME_AFTER

from .conftest import HOLD_MAX, TIMEOUT


def _click(qtbot: Any, widget: Any) -> None:
    qtbot.mouseClick(widget, Qt.MouseButton.LeftButton)


def _list_open(combo: Any) -> bool:
    view = combo.view()
    return view is not None and view.isVisible()


def _countdown(popup: Any) -> str:
    return popup.window._countdown.text()


def test_an_open_list_pauses_the_countdown_and_keeps_the_prompt(
    popup, prompt_factory, qtbot
) -> None:
    """Seen: the prompt expired (and the next one took its place) under the open Scope list.
    Now opening the list holds the prompt at snitchd and stops the countdown; it runs again
    once the list is closed and the person let go, and then goes to the waiting list."""
    window = popup.window
    window.add_prompt(prompt_factory(1))
    window.add_prompt(prompt_factory(2, host="b.example.org"))
    popup.arm()
    popup.clock.now += 20
    window.tick()
    assert _countdown(popup) == "No answer: deny in 9 s"
    _click(qtbot, window._scope)
    assert _list_open(window._scope)
    assert popup.deferred == [1, 2], "the prompt shown and the one behind it are held"
    popup.clock.now += TIMEOUT  # well past snitchd's first deadline
    window.tick()
    popup.shot("scope-list-open")
    assert window.pending.shown.id == 1 and popup.expired == []
    assert _countdown(popup).startswith("Paused while you choose")
    qtbot.keyClick(window._scope.view(), Qt.Key.Key_Down)
    qtbot.keyClick(window._scope.view(), Qt.Key.Key_Return)
    assert not _list_open(window._scope) and window._scope.currentData() == "host"
    popup.clock.now += RESUME_AFTER
    window.tick()
    assert _countdown(popup).startswith(f"No answer: to the waiting list in {MIN_LEFT:.0f} s")
    popup.clock.now += MIN_LEFT
    window.tick()
    assert [p.id for p in window.pending.aside] == [1] and popup.expired == []
    assert window.pending.shown.id == 2


def test_the_more_menu_pauses_the_countdown(popup, prompt_factory, qtbot) -> None:
    """The More menu runs its own event loop while open: the check happens inside it."""
    window = popup.window
    window.add_prompt(prompt_factory(1))
    popup.arm()
    seen: list[str] = []

    def while_open() -> None:
        menu = window._more.menu()
        popup.clock.now += 2 * TIMEOUT
        window.tick()
        seen.append(_countdown(popup))
        seen.append(str(window.pending.shown.id if window.pending.shown else None))
        menu.close()

    QTimer.singleShot(50, while_open)
    _click(qtbot, window._more)
    qtbot.waitUntil(lambda: len(seen) == 2, timeout=3000)
    assert seen[0].startswith("Paused while you choose") and seen[1] == "1"
    assert popup.expired == [] and popup.deferred == [1]


def test_a_key_pauses_and_the_countdown_resumes_after(popup, prompt_factory, qtbot) -> None:
    window = popup.window
    asked = popup.clock.now
    window.add_prompt(prompt_factory(1))
    popup.arm()
    window._scope.setFocus()
    popup.clock.now += 25
    window.tick()
    qtbot.keyClick(window._scope, Qt.Key.Key_Down)
    assert _countdown(popup).startswith("Paused while you choose")
    popup.clock.now += RESUME_AFTER
    window.tick()
    assert _countdown(popup).startswith(f"No answer: to the waiting list in {MIN_LEFT:.0f} s")
    hold = round(asked + HOLD_MAX - popup.clock.now)
    assert _countdown(popup).endswith(f"deny in {hold // 60}:{hold % 60:02d}")


def test_a_prompt_that_ends_under_an_open_list_stays_until_let_go(
    popup, prompt_factory, qtbot
) -> None:
    """snitchd may still end the shown prompt (it stopped, or the hold ran out): the window
    does not swap in the next one under the person's hands, and answers nothing meanwhile."""
    window = popup.window
    window.add_prompt(prompt_factory(1))
    window.add_prompt(prompt_factory(2, host="b.example.org"))
    popup.arm()
    _click(qtbot, window._scope)
    window.cancel_prompt(1, "default: timed out")
    assert window._rows["To"].text().startswith("updates.example.org")
    assert _countdown(popup).startswith("This prompt ended (default: timed out)")
    assert not window._allow.isEnabled()
    window._scope.hidePopup()
    window.allow()
    assert popup.answers == [], "an answer meant for the ended prompt went to the next"
    popup.clock.now += RESUME_AFTER
    window.tick()
    assert window._rows["To"].text().startswith("b.example.org")
    assert [e.label for e in popup.expired] == ["expired: denied by default"]


def test_later_puts_a_prompt_in_the_waiting_list_and_it_comes_back(
    popup, prompt_factory, qtbot
) -> None:
    window = popup.window
    window.add_prompt(prompt_factory(1))
    popup.arm()
    _click(qtbot, window._later)
    assert popup.deferred == [1] and not window.isVisible()
    assert [p.id for p in window.pending.aside] == [1]
    popup.clock.now += 5 * TIMEOUT  # far past prompt_timeout: snitchd holds it
    window.tick()
    assert popup.expired == []
    window.bring_back(1)
    popup.arm()
    assert window.isVisible() and window.pending.shown.id == 1
    _click(qtbot, window._allow)
    assert popup.answers == [Answer(1, Action.ALLOW, "forever", Scope.EXACT)]
    assert window.pending.aside == []


def test_an_expired_prompt_leaves_a_row_that_can_become_a_rule(
    popup, prompt_factory, qtbot
) -> None:
    window = popup.window
    window.add_prompt(prompt_factory(1))
    popup.clock.now += TIMEOUT
    window.tick()
    (gone,) = popup.expired
    assert gone.label == "expired: denied by default" and not window.isVisible()
    assert window.pending.trace == [gone]
    window.bring_back(1)
    popup.arm()
    popup.shot("expired-make-a-rule")
    assert _countdown(popup) == "Expired: denied by default: your answer makes a rule"
    model = window._duration.model()
    assert not model.item(window._duration.findData("once")).isEnabled()
    popup.clock.now += 10 * TIMEOUT  # no countdown for a rule to make
    window.tick()
    assert window.pending.shown.id == 1
    _click(qtbot, window._deny)
    assert popup.answers == [Answer(1, Action.DENY, "forever", Scope.EXACT)]
    assert window.pending.trace == [] and popup.deferred == []


def test_five_prompts_at_once_are_all_answered_by_a_person(popup, prompt_factory, qtbot) -> None:
    """Seen: of five prompts at once, two expired unseen while the person worked through
    the first three. A person who reads each prompt, opens the Scope list, picks and clicks
    (12 s a prompt: 60 s in all, twice prompt_timeout) now answers all five."""
    window = popup.window
    hosts = [f"h{i}.example.org" for i in range(1, 6)]
    for i, host in enumerate(hosts, 1):
        window.add_prompt(prompt_factory(i, host=host))
    for host in hosts:
        popup.clock.now += 4  # reads it
        window.tick()
        assert window._rows["To"].text().startswith(host)
        _click(qtbot, window._scope)
        popup.clock.now += 6  # thinks
        window.tick()
        qtbot.keyClick(window._scope.view(), Qt.Key.Key_Down)
        qtbot.keyClick(window._scope.view(), Qt.Key.Key_Return)
        popup.clock.now += 2
        window.tick()
        _click(qtbot, window._allow)
    assert popup.expired == []
    assert [(a.prompt_id, a.action, a.scope) for a in popup.answers] == [
        (i, Action.ALLOW, Scope.HOST) for i in range(1, 6)
    ]
    assert popup.deferred == [1, 2, 3, 4, 5]
    assert window.current is None and not window.isVisible()


def test_the_waiting_list_shows_every_prompt_and_picks_one(popup, prompt_factory, qtbot) -> None:
    from snitch_notifier.waiting import WaitingWindow  # noqa: PLC0415

    window = popup.window
    waiting = WaitingWindow(window)
    qtbot.addWidget(waiting)
    for i in (1, 2, 3):
        window.add_prompt(prompt_factory(i, host=f"h{i}.example.org"))
    popup.arm()
    _click(qtbot, window._later)
    window.cancel_prompt(3, "default: timed out")
    states = [waiting.table.item(r, 2).text() for r in range(waiting.table.rowCount())]
    assert states[0] == "shown now" and states[1].startswith("waiting: deny in 9:")
    assert states[2].startswith("expired: denied by default at ")
    waiting.table.selectRow(2)
    assert waiting.open.text() == "&Make a rule…"
    waiting.table.selectRow(1)
    assert waiting.open.text() == "&Answer…"
    _click(qtbot, waiting.open)
    assert window.pending.shown.id == 1 and window.isVisible()
    assert [p.id for p in window.pending.queue] == [1, 2]


def test_a_prompt_snitchd_will_not_hold_keeps_its_countdown(popup, prompt_factory, qtbot) -> None:
    """An older snitchd (no DeferPrompt) or a prompt that just ended: the countdown is not
    paused (snitchd's timer still runs: pausing it would lie), and clicks do not ask again."""
    window = popup.window
    window.defer_wanted.disconnect(popup.hold)
    asked: list[int] = []
    window.defer_wanted.connect(asked.append)
    window.defer_wanted.connect(window.hold_failed)
    window.add_prompt(prompt_factory(1))
    popup.arm()
    _click(qtbot, window._scope)
    window._scope.hidePopup()
    _click(qtbot, window._scope)
    window._scope.hidePopup()
    assert asked == [1]
    popup.clock.now += 10
    window.tick()
    assert _countdown(popup) == "No answer: deny in 19 s"
