"""The popup: one small always-on-top window that asks about one connection at a time.

Prompts queue in the one window ("2 more waiting") instead of stacking windows, so a burst of
new connections never buries the desktop. The window shows itself without taking the keyboard
(`WA_ShowWithoutActivating`): a prompt that appears while someone types must not swallow their
Enter. Once they click or switch to it: Enter allows with the shown choices, Esc denies, Alt+A /
Alt+D / Alt+R (or More → Reject) pick the action, Alt+F and Alt+S reach the duration and scope,
and Alt+I, while a profile is active, where the rule holds (every profile, or this one only).
Not every window system honours "show without activating" (Qt's offscreen plugin activates
every window it shows; so may some Wayland compositors), so a new prompt also ignores keys and
clicks for its first `ARM_DELAY` seconds, as browsers do for their security dialogs: a
keystroke meant for another window cannot answer it.

The countdown shows when snitchd will apply its default. At the deadline the prompt leaves the
window without an answer: snitchd's own timer applies the default and logs it as
"default: timed out" — an answer from here would be logged as a person's choice. Time comes from
the injected clock; `tick()` is what the timer calls, so tests drive it without sleeping.

Issue 15: a person at work is never cut off. Any click, key or open menu pauses the countdown
and asks snitchd to hold the prompts in the window (`defer_wanted`); *Later* (or closing the
window) puts prompts in the waiting list, and an expired prompt leaves a row there that can
still become a rule. Where each prompt is, and the countdown rules, live in `pending`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal
from PySide6.QtGui import (
    QCloseEvent,
    QFont,
    QGuiApplication,
    QKeySequence,
    QShortcut,
    QStandardItemModel,
)
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QMenu,
    QProgressBar,
    QPushButton,
    QStyle,
    QVBoxLayout,
    QWidget,
)

from snitch_common.answers import DURATIONS, Action, Answer, Reach, Scope, default_duration
from snitch_common.bus import PromptView
from snitch_common.choices import duration_why_not, reach_options, scope_options
from snitch_notifier.details import PromptDetails
from snitch_notifier.identity import AppIdentity, desktop_identity
from snitch_notifier.pending import Expired, Pending

__all__ = ["ARM_DELAY", "PromptWindow"]

log = logging.getLogger(__name__)

_WIDTH = 500
ARM_DELAY = 0.8  # seconds a new prompt ignores keys and clicks (see the module docstring)


class _Choice(QComboBox):
    """A drop-down list that says when its list opens and closes (a person is choosing)."""

    opened = Signal()
    closed = Signal()
    _open = False

    def showPopup(self) -> None:
        self._open = True
        self.opened.emit()
        super().showPopup()

    def hidePopup(self) -> None:
        super().hidePopup()
        if self._open:  # Qt also calls this on a closed list
            self._open = False
            self.closed.emit()


class PromptWindow(QDialog):
    answered = Signal(object)  # Answer
    expired = Signal(object)  # Expired: snitchd applied the default, the person did not answer
    defer_wanted = Signal(int)  # prompt id snitchd should hold (a person is there)
    set_aside = Signal(object)  # PromptView moved to the waiting list by its countdown
    changed = Signal()  # a prompt came, went, moved or was held

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        identify: Callable[[str | None], AppIdentity] = desktop_identity,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._clock = clock
        self._identify = identify
        self._identities: dict[str | None, AppIdentity] = {}
        self.pending = Pending(clock)
        self._layout_seen: object = None  # what `changed` last announced
        self._placed = False
        self._timer = QTimer(self)
        self._timer.setInterval(250)
        self._armed_at = 0.0
        self._timer.timeout.connect(self.tick)
        self.setWindowTitle("snitch — new connection")
        self.setWindowFlag(Qt.WindowType.WindowStaysOnTopHint)
        self.setAttribute(Qt.WidgetAttribute.WA_ShowWithoutActivating)
        self.setFixedWidth(_WIDTH)
        self._build()
        for widget in (self, *self.findChildren(QWidget)):
            widget.installEventFilter(self)

    # -- the queue ------------------------------------------------------------------------------
    @property
    def current(self) -> PromptView | None:
        """The prompt the window shows next (or now): the first of its queue."""
        return self.pending.current

    @property
    def waiting(self) -> int:
        """Prompts queued behind the one shown."""
        return max(0, len(self.pending.queue) - 1)

    def add_prompt(self, prompt: PromptView) -> None:
        if not self.pending.add(prompt):
            return
        if self.pending.interacting:
            self._hold()  # a person is working through the window: this one waits for them too
        if not self._timer.isActive():
            self._timer.start()
        self._update()

    def cancel_prompt(self, prompt_id: int, reason: str) -> None:
        """snitchd closed a prompt without us: by default (a row in the waiting list), or
        otherwise (shutdown, another agent): dropped quietly."""
        if reason.startswith("default:"):
            self._expire(prompt_id, reason)
        else:
            self.pending.remove(prompt_id)
        self._update()

    def clear(self, reason: str) -> None:
        """Every prompt is void (snitchd stopped and gave them its default on the way out)."""
        count = self.pending.clear()
        if count:
            log.info("prompts dropped count=%d: %s", count, reason)
        self._update()

    def tick(self) -> None:
        step = self.pending.tick()
        for gone in step.expired:
            self.expired.emit(gone)
        for prompt in step.set_aside:
            self.set_aside.emit(prompt)
        self._update()

    def _expire(self, prompt_id: int, reason: str) -> None:
        gone = self.pending.expire(prompt_id, reason)
        if gone is not None:
            self.expired.emit(gone)

    def app_name(self, exe: str | None) -> str:
        return self._identity(exe).name

    def _identity(self, exe: str | None) -> AppIdentity:
        identity = self._identities.get(exe)
        if identity is None:
            identity = self._identities[exe] = self._identify(exe)
        return identity

    # -- deferring and the waiting list ---------------------------------------------------------
    def held(self, prompt_id: int, seconds_left: float) -> None:
        """snitchd agreed to hold a prompt (DeferPrompt's reply)."""
        self.pending.mark_held(prompt_id, seconds_left)
        self._update()

    def hold_failed(self, prompt_id: int) -> None:
        self.pending.hold_failed(prompt_id)

    def later(self) -> None:
        """*Later*: the shown prompt goes to the waiting list; snitchd holds it meanwhile."""
        prompt = self.pending.shown
        if prompt is None:
            return
        self._hold_one(prompt.id)
        self.pending.put_aside(prompt.id)
        self._update()

    def bring_back(self, prompt_id: int) -> None:
        """From the waiting list (or an expired row, to make a rule) to the window, on top."""
        if self.pending.bring_back(prompt_id) is None:
            return
        self.pending.shown_id = None  # the person picked it: it is shown now
        self._update()
        self._present()
        self.activateWindow()

    def _hold(self) -> None:
        for prompt_id in self.pending.to_hold():
            self.defer_wanted.emit(prompt_id)

    def _hold_one(self, prompt_id: int) -> None:
        if self.pending.may_hold(prompt_id):
            self.pending.asked.add(prompt_id)
            self.defer_wanted.emit(prompt_id)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        """Any click or key in the window is a person at work: pause and hold."""
        if event.type() in (QEvent.Type.MouseButtonPress, QEvent.Type.KeyPress):
            self._touch()
        return super().eventFilter(watched, event)

    def _touch(self) -> None:
        if self.pending.shown is None:
            return
        self.pending.touch()
        self._hold()
        self._update()

    def _menu_opened(self) -> None:
        self.pending.menu_opened()
        self._hold()
        self._update()

    def _menu_closed(self) -> None:
        self.pending.menu_closed()
        self._update()

    # -- answering ------------------------------------------------------------------------------
    def allow(self) -> None:
        self.answer(Action.ALLOW)

    def deny(self) -> None:
        self.answer(Action.DENY)

    def reject_connection(self) -> None:
        self.answer(Action.REJECT)

    def answer(self, action: Action) -> None:
        """Answer the shown prompt with `action` and the shown duration and scope."""
        prompt = self.pending.shown
        if prompt is None or self.pending.ended or self._clock() < self._armed_at:
            return
        answer = Answer(
            prompt.id,
            action,
            str(self._duration.currentData()),
            Scope(self._scope.currentData()),
            Reach(self._reach.currentData()) if prompt.profile else Reach.EVERYWHERE,
        )
        self.pending.answered(prompt.id)
        self.answered.emit(answer)
        self._update()

    def reject(self) -> None:
        """Esc (QDialog's reject) means deny; the dialog itself stays for the next prompt."""
        self.deny()

    def closeEvent(self, event: QCloseEvent) -> None:
        """Closing the window puts its prompts in the waiting list (held by snitchd); the
        tray's waiting list brings any of them back."""
        event.ignore()
        for prompt in list(self.pending.queue):
            self._hold_one(prompt.id)
            self.pending.put_aside(prompt.id)
        self._update()
        self.hide()

    def answer_taken(self, answer: Answer, rule_id: int) -> None:
        """snitchd applied the answer (`rule_id`: the rule it made, -1 for once)."""
        self.pending.remove(answer.prompt_id)

    def answer_failed(self, answer: Answer, message: str, left_open: bool) -> None:
        """snitchd did not take an answer: the prompt had just timed out, or (`left_open`)
        snitchd refused the answer and still holds the prompt, which comes back to be
        answered again."""
        prompt = self.pending.sent.get(answer.prompt_id)
        where = f"prompt {answer.prompt_id}" if prompt is None else prompt.host or prompt.dst
        again = self.pending.answer_refused(answer.prompt_id, left_open)
        self._update()  # shows it again: after, as showing a prompt clears the status line
        self.show_status(
            f"Your {answer.action.value} for {where} was not applied: {message}"
            + (": answer it again" if again is not None else "")
        )
        if self.pending.current is not None and not self.isVisible():
            self._present()

    def show_status(self, text: str) -> None:
        """A line for what went wrong (an answer snitchd refused, snitchd gone)."""
        self._status.setText(text)
        self._status.setVisible(bool(text))

    # -- view -----------------------------------------------------------------------------------
    def _build(self) -> None:
        root = QVBoxLayout(self)
        root.setContentsMargins(16, 14, 16, 14)
        root.setSpacing(10)
        self._info = PromptDetails(_WIDTH)
        root.addWidget(self._info)
        # The tests and the screenshots read these by their old names.
        self._rows, self._details = self._info.rows, self._info.details
        self._title, self._path = self._info.title, self._info.path
        root.addLayout(self._build_choices())
        root.addLayout(self._build_countdown())
        root.addLayout(self._build_buttons())
        self._status = QLabel()
        self._status.setWordWrap(True)
        self._status.setStyleSheet("color: #b3261e;")
        self._status.hide()
        root.addWidget(self._status)

    def _build_choices(self) -> QFormLayout:
        choices = QFormLayout()
        choices.setHorizontalSpacing(14)
        self._duration = _Choice()
        for value, text in DURATIONS:
            self._duration.addItem(text, value)
        self._scope = _Choice()
        self._reach = _Choice()  # shown only while a profile is active (issue 17)
        for combo in (self._duration, self._scope, self._reach):
            combo.opened.connect(self._menu_opened)
            combo.closed.connect(self._menu_closed)
        for mnemonic, combo in (
            ("&For", self._duration),
            ("&Scope", self._scope),
            ("&In", self._reach),
        ):
            label = QLabel(mnemonic)
            label.setBuddy(combo)
            choices.addRow(label, combo)
        self._choices = choices
        return choices

    def _build_countdown(self) -> QVBoxLayout:
        box = QVBoxLayout()
        box.setSpacing(4)
        self._bar = QProgressBar()
        self._bar.setTextVisible(False)
        self._bar.setFixedHeight(6)
        box.addWidget(self._bar)
        line = QHBoxLayout()
        self._countdown = QLabel()
        self._more_waiting = QLabel()
        waiting_font = self._more_waiting.font()
        waiting_font.setWeight(QFont.Weight.DemiBold)
        self._more_waiting.setFont(waiting_font)
        line.addWidget(self._countdown)
        line.addStretch(1)
        line.addWidget(self._more_waiting)
        box.addLayout(line)
        return box

    def _build_buttons(self) -> QHBoxLayout:
        buttons = QHBoxLayout()
        self._more = QPushButton("&More")
        self._more.setAutoDefault(False)
        menu = QMenu(self._more)
        menu.addAction("&Reject — refuse at once, the app fails fast", self.reject_connection)
        menu.aboutToShow.connect(self._menu_opened)
        menu.aboutToHide.connect(self._menu_closed)
        self._more.setMenu(menu)
        self._later = QPushButton("&Later")
        self._later.setAutoDefault(False)
        self._later.setToolTip(
            "Put it in the waiting list (tray): the connection waits for you a while longer"
        )
        self._later.clicked.connect(self.later)
        self._deny = QPushButton("&Deny")
        self._deny.setAutoDefault(False)
        self._deny.clicked.connect(self.deny)
        self._allow = QPushButton("&Allow")
        self._allow.setDefault(True)
        self._allow.clicked.connect(self.allow)
        for button in (self._deny, self._allow):
            button.setMinimumWidth(96)
        strong = self._allow.font()
        strong.setWeight(QFont.Weight.Bold)
        self._allow.setFont(strong)
        buttons.addWidget(self._more)
        buttons.addWidget(self._later)
        buttons.addStretch(1)
        buttons.addWidget(self._deny)
        buttons.addWidget(self._allow)
        self._reject_key = QShortcut(QKeySequence("Alt+R"), self, self.reject_connection)
        return buttons

    def _update(self) -> None:
        p = self.pending
        fresh = p.show_next()
        prompt = p.shown
        layout_now = (
            tuple(q.id for q in p.queue),
            tuple(a.id for a in p.aside),
            tuple(e.prompt.id for e in p.trace),
            frozenset(p.held),
        )
        if layout_now != self._layout_seen:
            self._layout_seen = layout_now
            self.changed.emit()
        if prompt is None:
            if not p.queue and not p.aside:
                self._timer.stop()
            self.hide()
            return
        if not self._timer.isActive():
            self._timer.start()
        if fresh is not None:
            log.info("prompt shown id=%d to=%s", prompt.id, prompt.destination)
            self._fill(prompt)
            self._armed_at = self._clock() + ARM_DELAY
        now = self._clock()
        armed = now >= self._armed_at and not p.ended
        for control in (self._allow, self._deny, self._more, self._reject_key, self._later):
            control.setEnabled(armed)
        late = prompt.id in p.late
        left = p.seconds_left()
        span = p.spans.get(prompt.id, 1.0)
        self._bar.setVisible(not late)
        self._bar.setEnabled(not (prompt.id in p.held and p.interacting))  # grey: paused
        self._bar.setRange(0, round(span * 10))
        self._bar.setValue(min(round(span * 10), round(left * 10)))
        self._countdown.setText(self._countdown_text(prompt, left, late))
        self._more_waiting.setText(_waiting_text(self.waiting, len(p.aside)))
        layout = self.layout()
        if layout is not None:
            layout.activate()  # sizes now, not at the next event loop turn (and in screenshots)
        if not self.isVisible():
            self._present()

    def _countdown_text(self, prompt: PromptView, left: float, late: bool) -> str:
        p, default = self.pending, prompt.default_action
        if p.ended:
            return f"This prompt ended ({p.ended}): let go to see the next"
        if late:
            return f"{Expired(prompt, '', 0).label.capitalize()}: your answer makes a rule"
        if prompt.id not in p.held:
            return f"No answer: {default} in {round(left)} s"
        hold = _minutes(prompt.deadline - self._clock())
        if p.interacting:
            return f"Paused while you choose  ·  {default} in {hold} at the latest"
        return f"No answer: to the waiting list in {round(left)} s  ·  {default} in {hold}"

    def _fill(self, prompt: PromptView) -> None:
        """Show a new current prompt, with the default choices (never the last prompt's)."""
        identity = self._identity(prompt.exe)
        fallback = self.style().standardIcon(QStyle.StandardPixmap.SP_DesktopIcon)
        self._info.show_prompt(prompt, identity, fallback)
        duration = default_duration(prompt.verified, prompt.tampered)
        late = prompt.id in self.pending.late
        refused = duration_why_not(prompt, "process")
        if late and duration == "once":
            duration = "process" if refused is None else "forever"
        self._duration.setCurrentIndex(self._duration.findData(duration))
        durations = self._duration.model()
        assert isinstance(durations, QStandardItemModel)
        durations.item(self._duration.findData("once")).setEnabled(not late)
        until_quit = durations.item(self._duration.findData("process"))
        until_quit.setEnabled(refused is None)
        until_quit.setToolTip(refused or "")
        self._scope.clear()
        model = self._scope.model()
        assert isinstance(model, QStandardItemModel)
        for i, option in enumerate(scope_options(prompt, identity.name)):
            self._scope.addItem(option.label, option.scope.value)
            if option.why_not is not None:
                item = model.item(i)
                item.setEnabled(False)
                item.setToolTip(option.why_not)
        self._scope.setCurrentIndex(0)
        self._reach.clear()
        for reach in reach_options(prompt):
            self._reach.addItem(reach.label, reach.reach.value)
        self._reach.setCurrentIndex(0)
        self._choices.setRowVisible(self._reach, bool(prompt.profile))
        self._allow.setFocus()
        self.show_status("")

    def _present(self) -> None:
        """Show on top, near the top-right corner the first time, without taking focus."""
        self.adjustSize()
        if not self._placed:
            screen = QGuiApplication.primaryScreen()
            if screen is not None:
                area = screen.availableGeometry()
                self.move(area.right() - self.width() - 24, area.top() + 48)
            self._placed = True
        self.show()
        self.raise_()


def _waiting_text(queued: int, aside: int) -> str:
    parts = [f"{queued} more waiting"] if queued else []
    if aside:
        parts.append(f"{aside} in the waiting list")
    return "  ·  ".join(parts)


def _minutes(seconds: float) -> str:
    whole = max(0, round(seconds))
    return f"{whole // 60}:{whole % 60:02d}" if whole >= 60 else f"{whole} s"
