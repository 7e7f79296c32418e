"""The popup window: what it shows, what each choice answers, the countdown, the queue, keys.

Every test leaves a screenshot in its tmp dir (the `popup` fixture takes one if the test did
not), so a failure can be looked at, not only read.
"""

from __future__ import annotations

from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication

from snitch_common.answers import Action, Answer, Scope


def _texts(window: Any) -> dict[str, str]:
    rows = {key: label.text() for key, label in window._rows.items()}
    return rows | {
        "title": window._title.text(),
        "path": window._path.text(),
        "countdown": window._countdown.text(),
        "waiting": window._more_waiting.text(),
    }


def _choose(window: Any, duration: str, scope: str) -> None:
    window._duration.setCurrentIndex(window._duration.findData(duration))
    window._scope.setCurrentIndex(window._scope.findData(scope))


def test_shows_every_detail_it_was_given(popup, prompt_factory) -> None:
    """Who (name, path, pid, user, parents, command, hash), where (host and IP, port,
    protocol, interface) and when the default applies — the same as `snitchctl agent`."""
    popup.window.add_prompt(prompt_factory())
    popup.shot("details")
    shown = _texts(popup.window)
    assert "python3.11" in shown["title"] and "wants to connect" in shown["title"]
    assert shown["path"] == "/usr/bin/python3.11"
    assert shown["To"] == "updates.example.org  (203.0.113.7)"
    assert shown["Port"] == "443 / TCP  ·  via eth0"
    assert shown["Process"] == "pid 4242  ·  user alice"
    assert shown["Parent"] == "bash (4100)  ←  systemd (1)"
    assert shown["Command"] == "python3.11 sync.py --all"
    assert shown["SHA-256"].startswith("9f86d0") and shown["SHA-256"].endswith("0a08")
    assert shown["countdown"] == "No answer: deny in 30 s"
    assert shown["waiting"] == ""
    assert popup.window.isVisible()


def test_an_unverified_or_injected_process_is_shown_with_a_warning(popup, prompt_factory) -> None:
    """Issue 14: an executable whose path names another file here, or one running preloaded
    code, is said so in red, and the answer preselected is once (no lasting rule fits it)."""
    popup.window.add_prompt(
        prompt_factory(
            verified=False,
            script="/home/alice/sync.py",
            notes=("unverified executable", "script /home/alice/sync.py"),
        )
    )
    popup.shot("unverified")
    shown = _texts(popup.window)
    warning = popup.window._rows["Warning"]
    assert (warning.toolTip() or warning.text()) == (
        "unverified executable; its rules do not apply: the path names another file here"
    )
    assert shown["Script"] == "/home/alice/sync.py"
    assert popup.window._duration.currentData() == "once"
    popup.window.add_prompt(prompt_factory(2, tampered=True, notes=("preloaded /tmp/x.so",)))
    popup.window.cancel_prompt(1, "answered")  # the first goes; the second is shown
    assert _texts(popup.window)["Warning"] == "preloaded /tmp/x.so; its allow rules do not apply"
    assert popup.window._duration.currentData() == "once"
    # A script that cannot be trusted is a warning too (it was hidden with the script's name).
    doubt = ("script /home/alice/sync.py", "script not trusted: PYTHONPATH set")
    popup.window.add_prompt(prompt_factory(3, script="/home/alice/sync.py", notes=doubt))
    popup.window.cancel_prompt(2, "answered")
    assert _texts(popup.window)["Warning"] == "script not trusted: PYTHONPATH set"


def test_missing_details_hide_their_rows(popup, prompt_factory) -> None:
    """An address without a name, ICMP, and a flow with no process: no empty rows, no
    'port 0'."""
    prompt = prompt_factory(
        host=None, proto="icmp", port=0, pid=None, exe=None, cmdline=(), parents=(), sha256=None
    )
    popup.window.add_prompt(prompt)
    popup.shot("sparse")
    shown = _texts(popup.window)
    assert shown["To"] == "203.0.113.7" and shown["Port"] == "ICMP  ·  via eth0"
    details = popup.window._details
    assert not details.isRowVisible(popup.window._rows["Parent"])
    assert not details.isRowVisible(popup.window._rows["SHA-256"])


@pytest.mark.parametrize(
    ("action", "duration", "scope"),
    [
        (Action.ALLOW, "forever", "exact"),
        (Action.ALLOW, "once", "host"),
        (Action.ALLOW, "process", "app"),
        (Action.DENY, "5m", "domain"),
        (Action.DENY, "15m", "port"),
        (Action.DENY, "60m", "exact"),
        (Action.REJECT, "restart", "host"),
    ],
)
def test_each_choice_answers_with_it(popup, prompt_factory, action, duration, scope) -> None:
    popup.window.add_prompt(prompt_factory(7))
    popup.arm()
    _choose(popup.window, duration, scope)
    popup.shot(f"{action.value}-{duration}-{scope}")
    buttons = {Action.ALLOW: popup.window._allow, Action.DENY: popup.window._deny}
    if action in buttons:
        buttons[action].click()
    else:
        popup.window._more.menu().actions()[0].trigger()
    assert popup.answers == [Answer(7, action, duration, Scope(scope))]
    assert popup.window.current is None and not popup.window.isVisible()


def test_defaults_are_forever_and_this_host_and_port(popup, prompt_factory) -> None:
    popup.window.add_prompt(prompt_factory())
    assert popup.window._duration.currentData() == "forever"
    assert popup.window._scope.currentData() == "exact"
    assert popup.window._scope.currentText() == "only updates.example.org on port 443/tcp"


def test_scopes_that_cannot_apply_are_disabled_with_the_reason(popup, prompt_factory) -> None:
    """No host name: no domain rule; ICMP: no port rule (snitchd would refuse both)."""
    popup.window.add_prompt(prompt_factory(host=None, rule_host=None, proto="icmp", port=0))
    model = popup.window._scope.model()
    items = {model.item(i).data(Qt.ItemDataRole.UserRole): model.item(i) for i in range(5)}
    assert not items["domain"].isEnabled() and "no host name" in items["domain"].toolTip()
    assert not items["port"].isEnabled() and "icmp has no ports" in items["port"].toolTip()
    assert items["exact"].isEnabled() and items["app"].isEnabled()


def test_a_prompt_of_no_known_app_offers_only_its_destination(popup, prompt_factory) -> None:
    """The kernel's IGMP report: "anything this app connects to" would have made a bare
    `allow`; only "only 224.0.0.22" (its rule names no app: "from any app") and "any app to
    224.0.0.22" can be chosen."""
    prompt = prompt_factory(
        exe=None, pid=None, uid=None, user=None, proto="other", dst="224.0.0.22", port=0,
        source="kernel", host=None, rule_host=None, cmdline=(), parents=(), sha256=None,
    )  # fmt: skip
    popup.window.add_prompt(prompt)
    model = popup.window._scope.model()
    items = {model.item(i).data(Qt.ItemDataRole.UserRole): model.item(i) for i in range(10)}
    assert {k for k, item in items.items() if item.isEnabled()} == {"exact", "anyapp"}
    assert "no app is known" in items["app"].toolTip()
    assert popup.window._scope.currentText() == "only 224.0.0.22, from any app"
    # "Until the app quits" needs an app to end with: snitchd refuses it here.
    durations = popup.window._duration.model()
    process = durations.item(popup.window._duration.findData("process"))
    assert not process.isEnabled()
    popup.shot("no-known-app")
    popup.window.add_prompt(prompt_factory(2))
    popup.window.cancel_prompt(prompt.id, "answered by another agent")
    assert popup.window.current.id == 2
    assert durations.item(popup.window._duration.findData("process")).isEnabled()


def test_countdown_follows_the_clock_and_expiry_drops_the_prompt(popup, prompt_factory) -> None:
    """At the deadline the prompt leaves the window unanswered: snitchd applies its default
    and logs it as a timeout, not as a person's choice."""
    prompt = prompt_factory(deadline=popup.clock.now + 30)
    popup.window.add_prompt(prompt)
    popup.clock.now += 18
    popup.window.tick()
    popup.shot("12-seconds-left")
    assert _texts(popup.window)["countdown"] == "No answer: deny in 12 s"
    assert popup.window._bar.value() == popup.window._bar.maximum() * 12 // 30
    popup.clock.now += 12
    popup.window.tick()
    assert [e.prompt for e in popup.expired] == [prompt] and popup.answers == []
    assert popup.window.current is None and not popup.window.isVisible()
    assert not popup.window._timer.isActive()


def test_the_window_timer_drives_the_countdown(popup, prompt_factory, qtbot) -> None:
    """The real QTimer calls tick(): an expired prompt goes within one interval."""
    popup.window.add_prompt(prompt_factory(deadline=popup.clock.now + 5))
    popup.clock.now += 5
    qtbot.waitUntil(lambda: bool(popup.expired), timeout=2000)


def test_queued_prompts_are_shown_in_turn(popup, prompt_factory) -> None:
    for i, host in enumerate(("a.example.org", "b.example.org", "c.example.org"), 1):
        popup.window.add_prompt(prompt_factory(i, host=host))
    popup.arm()
    popup.shot("three-queued")
    assert _texts(popup.window)["waiting"] == "2 more waiting"
    assert popup.window._rows["To"].text().startswith("a.example.org")
    _choose(popup.window, "once", "host")
    popup.window._allow.click()
    popup.arm()
    popup.shot("second-of-three")
    assert _texts(popup.window)["waiting"] == "1 more waiting"
    assert popup.window._rows["To"].text().startswith("b.example.org")
    assert popup.window._duration.currentData() == "forever", "choices carried over"
    popup.window._deny.click()
    popup.arm()
    assert _texts(popup.window)["waiting"] == ""
    popup.window._allow.click()
    assert [(a.prompt_id, a.action) for a in popup.answers] == [
        (1, Action.ALLOW),
        (2, Action.DENY),
        (3, Action.ALLOW),
    ]
    assert popup.window.current is None


def test_a_prompt_sent_twice_is_queued_once(popup, prompt_factory) -> None:
    popup.window.add_prompt(prompt_factory(1))
    popup.window.add_prompt(prompt_factory(1))
    assert popup.window.waiting == 0


def test_cancelled_prompts_leave_the_queue(popup, prompt_factory) -> None:
    """snitchd's Cancel (timeout elsewhere, another agent, shutdown) for the shown prompt
    moves on to the next; for a queued one it only shortens the queue."""
    for i in (1, 2, 3):
        popup.window.add_prompt(prompt_factory(i))
    popup.window.cancel_prompt(2, "default: timed out")
    assert popup.window.waiting == 1 and popup.window.current.id == 1
    popup.window.cancel_prompt(1, "default: timed out")
    assert popup.window.current.id == 3 and popup.window.waiting == 0
    popup.window.clear("snitchd stopped")
    popup.shot("cleared")
    assert popup.window.current is None and popup.answers == []


def test_expired_rows_go_with_the_snitchd_that_asked_them(popup, prompt_factory) -> None:
    """The next snitchd numbers its prompts from 1 again: an old expired row of the same id,
    brought back, stood in for the new prompt (shown in its place, answered for its flow)."""
    popup.window.add_prompt(prompt_factory(3, exe="/usr/bin/curl"))
    popup.window.cancel_prompt(3, "default: timed out")
    assert [e.prompt.id for e in popup.window.pending.trace] == [3]
    popup.window.clear("snitchd stopped")
    assert popup.window.pending.trace == []
    popup.window.add_prompt(prompt_factory(3, exe="/usr/bin/nc", dst="198.51.100.9"))
    assert popup.window.pending.bring_back(3).exe == "/usr/bin/nc"
    assert popup.window.current.exe == "/usr/bin/nc" and not popup.window.pending.late


def test_a_refused_answer_is_shown(popup, prompt_factory) -> None:
    """The prompt ended meanwhile (timed out, not ours): said, and the next one is shown."""
    popup.window.add_prompt(prompt_factory(1))
    popup.window.add_prompt(prompt_factory(2))
    popup.arm()
    popup.window._allow.click()
    popup.window.answer_failed(popup.answers[0], "no open prompt 1 for this agent", False)
    popup.shot("refused")
    assert popup.window._status.isVisibleTo(popup.window)
    assert popup.window._status.text() == (
        "Your allow for updates.example.org was not applied: no open prompt 1 for this agent"
    )
    assert popup.window.current.id == 2 and popup.window.pending.sent == {}


def test_a_prompt_snitchd_still_holds_after_refusing_its_answer_comes_back(
    popup, prompt_factory
) -> None:
    """snitchd refused the answer's words (or could not write its rule) and holds the prompt:
    it comes back in front, with the reason, to be answered otherwise; a taken answer then
    ends it. Before, it left the popup and its flow waited for the default."""
    popup.window.add_prompt(prompt_factory(1))
    popup.window.add_prompt(prompt_factory(2))
    popup.arm()
    popup.window._allow.click()
    assert popup.window.current.id == 2
    refusal = "scope 'domain' needs a host name this app itself resolved"
    popup.window.answer_failed(popup.answers[0], refusal, True)
    popup.shot("refused-again")
    assert popup.window.current.id == 1 and popup.window.waiting == 1
    assert popup.window._status.text() == (
        f"Your allow for updates.example.org was not applied: {refusal}: answer it again"
    )
    popup.arm()
    popup.window._deny.click()
    assert popup.window.current.id == 2
    popup.window.answer_taken(popup.answers[1], 7)
    assert popup.window.pending.sent == {} and popup.window.pending.find(1) is None


def test_a_prompt_that_timed_out_while_its_answer_was_on_the_way_stays_gone(
    popup, prompt_factory
) -> None:
    """snitchd's Cancel came first: the prompt is a row of the waiting list's trace, and the
    refusal that follows does not bring back a prompt snitchd no longer holds."""
    popup.window.add_prompt(prompt_factory(1))
    popup.arm()
    popup.window._allow.click()
    popup.window.cancel_prompt(1, "default: timed out")
    popup.window.answer_failed(popup.answers[0], "a refusal", True)
    assert popup.window.current is None
    assert [e.prompt.id for e in popup.window.pending.trace] == [1]
    assert popup.window._status.text().endswith("was not applied: a refusal")


def _activate(qtbot: Any, window: Any) -> None:
    """As if the person clicked the popup: only then does it get the keyboard."""
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=2000)


def test_enter_allows_with_the_shown_choices(popup, prompt_factory, qtbot) -> None:
    popup.window.add_prompt(prompt_factory(3))
    popup.arm()
    _activate(qtbot, popup.window)
    _choose(popup.window, "15m", "domain")
    popup.shot("before-enter")
    qtbot.keyClick(popup.window, Qt.Key.Key_Return)
    assert popup.answers == [Answer(3, Action.ALLOW, "15m", Scope("domain"))]


def test_enter_allows_even_with_the_deny_button_focused(popup, prompt_factory, qtbot) -> None:
    popup.window.add_prompt(prompt_factory(3))
    popup.arm()
    _activate(qtbot, popup.window)
    popup.window._deny.setFocus()
    qtbot.keyClick(popup.window._deny, Qt.Key.Key_Enter, Qt.KeyboardModifier.KeypadModifier)
    assert [a.action for a in popup.answers] == [Action.ALLOW]


def test_escape_denies(popup, prompt_factory, qtbot) -> None:
    popup.window.add_prompt(prompt_factory(4))
    popup.arm()
    _activate(qtbot, popup.window)
    qtbot.keyClick(popup.window, Qt.Key.Key_Escape)
    assert popup.answers == [Answer(4, Action.DENY, "forever", Scope("exact"))]


@pytest.mark.parametrize(
    ("key", "action"), [("a", Action.ALLOW), ("d", Action.DENY), ("r", Action.REJECT)]
)
def test_mnemonic_keys_answer(popup, prompt_factory, qtbot, key, action) -> None:
    popup.window.add_prompt(prompt_factory(5))
    popup.arm()
    _activate(qtbot, popup.window)
    qtbot.keyClick(popup.window, key, Qt.KeyboardModifier.AltModifier)
    # A button's mnemonic "animates" the press: the click comes ~100 ms later.
    qtbot.waitUntil(lambda: bool(popup.answers), timeout=2000)
    assert popup.answers == [Answer(5, action, "forever", Scope("exact"))]


def test_mnemonics_reach_duration_and_scope(popup, prompt_factory, qtbot) -> None:
    """Alt+F and Alt+S focus the two lists; arrow keys change them; Enter allows."""
    popup.window.add_prompt(prompt_factory(6))
    popup.arm()
    _activate(qtbot, popup.window)
    qtbot.keyClick(popup.window, "f", Qt.KeyboardModifier.AltModifier)
    assert popup.window._duration.hasFocus()
    qtbot.keyClick(popup.window._duration, Qt.Key.Key_Home)
    qtbot.keyClick(popup.window, "s", Qt.KeyboardModifier.AltModifier)
    assert popup.window._scope.hasFocus()
    qtbot.keyClick(popup.window._scope, Qt.Key.Key_Down)
    popup.shot("keyboard-choices")
    qtbot.keyClick(popup.window, Qt.Key.Key_Return)
    assert popup.answers == [Answer(6, Action.ALLOW, "once", Scope("host"))]


def test_the_window_asks_to_be_shown_on_top_without_activation(popup, prompt_factory) -> None:
    """X11 and Wayland plugins read these hints; offscreen ignores them (it activates every
    window it shows), so the behaviour itself is covered by the arming test below."""
    popup.window.add_prompt(prompt_factory())
    assert popup.window.testAttribute(Qt.WidgetAttribute.WA_ShowWithoutActivating)
    assert popup.window.windowFlags() & Qt.WindowType.WindowStaysOnTopHint
    handle = popup.window.windowHandle()
    assert handle is not None and handle.property("_q_showWithoutActivating") is True


def test_a_new_prompt_ignores_keys_and_clicks_for_a_moment(popup, prompt_factory, qtbot) -> None:
    """Enter typed for another window just as the prompt appears must not allow it, even
    where the window system gives the new window the keyboard (offscreen does)."""
    popup.window.add_prompt(prompt_factory(1))
    popup.window.add_prompt(prompt_factory(2))
    popup.shot("unarmed")
    assert not popup.window._allow.isEnabled()
    qtbot.keyClick(popup.window, Qt.Key.Key_Return)
    qtbot.keyClick(popup.window, Qt.Key.Key_Escape)
    popup.window._allow.click()
    assert popup.answers == []
    popup.arm()
    assert popup.window._allow.isEnabled()
    qtbot.keyClick(popup.window, Qt.Key.Key_Return)
    assert [a.prompt_id for a in popup.answers] == [1]
    qtbot.keyClick(popup.window, Qt.Key.Key_Return)
    assert [a.prompt_id for a in popup.answers] == [1], "a double Enter answered the next too"


def test_closing_the_window_keeps_the_prompts(popup, prompt_factory) -> None:
    """Issue 15: closing the window puts its prompts in the waiting list, held by snitchd,
    and the waiting list brings them back."""
    popup.window.add_prompt(prompt_factory(1))
    popup.window.add_prompt(prompt_factory(2))
    popup.shot("before-close")
    popup.window.close()
    assert not popup.window.isVisible()
    assert [p.id for p in popup.window.pending.aside] == [1, 2] and popup.answers == []
    assert popup.deferred == [1, 2]
    popup.window.bring_back(2)
    assert popup.window.isVisible() and popup.window.pending.shown.id == 2
