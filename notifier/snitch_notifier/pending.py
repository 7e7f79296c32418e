"""The prompts this agent holds, and where each one is: shown in the popup, queued behind it,
put aside in the waiting list, or gone by default (a trace the person can still act on).

Pure (no Qt, no bus): the popup and the waiting list are views of it, so what happens when a
person interacts, defers or walks away is decided in one place and tested on a hand-moved clock.

The rules it keeps (issue 15):
- snitchd owns the deadline. A prompt the person interacted with, put aside, or that waits
  behind one they are working through is *held*: the popup asks snitchd to defer it
  (`to_hold`), and once snitchd said yes (`mark_held`) its flow waits up to
  `prompt_hold_max`. Only then may the popup's countdown pause: pausing a countdown snitchd
  still runs would lie about when the default applies.
- Any interaction (a click, a key, an open menu) pauses the shown prompt's countdown; it runs
  again `RESUME_AFTER` seconds after the last one, with at least `MIN_LEFT` to go. When a held
  prompt's countdown ends it moves to the waiting list, never to the default.
- The shown prompt is never replaced while the person interacts with it: if it ends under
  their hands (snitchd stopped, its hold ran out) it stays on screen, inert, until they let go.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from snitch_common.bus import PromptView

__all__ = ["MIN_LEFT", "RESUME_AFTER", "Expired", "Pending", "Step"]

RESUME_AFTER = 3.0  # seconds after the last click or key (no menu open) the countdown runs again
MIN_LEFT = 10.0  # a countdown that runs again has at least this long
_TRACE = 20  # expired prompts kept in the waiting list

_PAST = {"allow": "allowed", "deny": "denied", "reject": "rejected"}


@dataclass(frozen=True, slots=True)
class Expired:
    """A prompt snitchd decided by default: the person did not answer it in time."""

    prompt: PromptView
    reason: str  # snitchd's, e.g. "default: timed out"
    at: float

    @property
    def label(self) -> str:
        action = self.prompt.default_action
        return f"expired: {_PAST.get(action, action)} by default"


@dataclass(frozen=True, slots=True)
class Step:
    """What one tick changed, for the views to announce."""

    expired: tuple[Expired, ...] = ()
    set_aside: tuple[PromptView, ...] = ()


@dataclass(slots=True)
class Pending:
    clock: Callable[[], float]
    queue: list[PromptView] = field(default_factory=list)  # the popup's, shown in turn
    aside: list[PromptView] = field(default_factory=list)  # the waiting list
    trace: list[Expired] = field(default_factory=list)  # newest first
    held: set[int] = field(default_factory=set)  # snitchd holds these up to prompt_hold_max
    asked: set[int] = field(default_factory=set)  # DeferPrompt sent, no reply yet
    refused: set[int] = field(default_factory=set)  # snitchd would not hold these: not again
    late: set[int] = field(default_factory=set)  # expired ones brought back to make a rule
    sent: dict[int, PromptView] = field(default_factory=dict)  # answered; snitchd's reply due
    spans: dict[int, float] = field(default_factory=dict)  # seconds each had when it arrived
    shown_id: int | None = None
    left: float = 0.0  # the shown, held prompt's countdown
    menus: int = 0  # menus and drop-down lists open now
    touched: float = -math.inf  # the last click or key
    ended: str = ""  # why the shown prompt ended under the person's hands
    ghost: PromptView | None = None  # that prompt, still on screen until they let go
    _ticked: float = 0.0
    _paused: bool = False

    def __post_init__(self) -> None:
        self._ticked = self.clock()

    # -- what is where -----------------------------------------------------------------------
    @property
    def current(self) -> PromptView | None:
        return self.queue[0] if self.queue else None

    @property
    def shown(self) -> PromptView | None:
        """The prompt on screen: the current one, or the one that ended while touched."""
        if self.shown_id is None:
            return None
        if self.ghost is not None and self.ghost.id == self.shown_id:
            return self.ghost
        return self.find(self.shown_id)

    def find(self, prompt_id: int) -> PromptView | None:
        for p in (*self.queue, *self.aside):
            if p.id == prompt_id:
                return p
        return None

    def add(self, prompt: PromptView) -> bool:
        if self.find(prompt.id) is not None:
            return False
        self.queue.append(prompt)
        self.spans[prompt.id] = max(1.0, prompt.deadline - self.clock())
        return True

    def remove(self, prompt_id: int) -> PromptView | None:
        found = self._take_out(prompt_id) or self.sent.pop(prompt_id, None)
        if found is not None and prompt_id not in self.late:
            self.spans.pop(prompt_id, None)
            self.held.discard(prompt_id)
            self.asked.discard(prompt_id)
            self.refused.discard(prompt_id)
        self.late.discard(prompt_id)
        return found

    def _take_out(self, prompt_id: int) -> PromptView | None:
        found = self.find(prompt_id)
        self.queue = [p for p in self.queue if p.id != prompt_id]
        self.aside = [p for p in self.aside if p.id != prompt_id]
        return found

    def clear(self) -> int:
        """snitchd stopped: every prompt is void, the expired ones too. The next snitchd
        numbers its prompts from 1 again, so an old row brought back would stand in for a new
        prompt of the same id, and an answer to it would make a rule for that one's flow."""
        n = len(self.queue) + len(self.aside)
        self.queue.clear()
        self.aside.clear()
        self.trace.clear()
        self.sent.clear()
        self.held.clear()
        self.asked.clear()
        self.refused.clear()
        self.late.clear()
        return n

    # -- interaction -------------------------------------------------------------------------
    @property
    def interacting(self) -> bool:
        return self.menus > 0 or self.clock() - self.touched < RESUME_AFTER

    def touch(self) -> None:
        self.touched = self.clock()
        self._paused = True

    def menu_opened(self) -> None:
        self.menus += 1
        self.touch()

    def menu_closed(self) -> None:
        self.menus = max(0, self.menus - 1)
        self.touch()

    def to_hold(self) -> list[int]:
        """The popup's prompts snitchd should hold now that a person is there; marks them asked."""
        ids = [p.id for p in self.queue if self.may_hold(p.id)]
        self.asked.update(ids)
        return ids

    def may_hold(self, prompt_id: int) -> bool:
        """Not held yet, not asked, not refused before, and not an expired one."""
        return prompt_id not in self.held | self.asked | self.refused | self.late

    def mark_held(self, prompt_id: int, seconds_left: float) -> None:
        """snitchd holds the prompt's flow for `seconds_left` more seconds."""
        self.asked.discard(prompt_id)
        now = self.clock()
        for place in (self.queue, self.aside):
            for i, p in enumerate(place):
                if p.id == prompt_id:
                    if prompt_id == self.shown_id and prompt_id not in self.held:
                        self.left = max(0.0, p.deadline - now)  # the same countdown goes on
                    place[i] = replace(p, deadline=now + seconds_left)
                    self.held.add(prompt_id)

    def hold_failed(self, prompt_id: int) -> None:
        """snitchd refused (an older snitchd, or the prompt just ended): its countdown keeps
        running to the default, and we do not ask again at every click."""
        self.asked.discard(prompt_id)
        self.refused.add(prompt_id)

    def put_aside(self, prompt_id: int) -> PromptView | None:
        """To the waiting list (a late one back to the trace); returns it if it moved."""
        if prompt_id in self.late:
            self.remove(prompt_id)
            return None
        found = next((p for p in self.queue if p.id == prompt_id), None)
        if found is None:
            return None
        self.queue.remove(found)
        self.aside.append(found)
        return found

    def bring_back(self, prompt_id: int) -> PromptView | None:
        """From the waiting list (or the trace, to make a rule) to the front of the popup."""
        found = next((p for p in self.aside if p.id == prompt_id), None)
        if found is not None:
            self.aside.remove(found)
        else:
            gone = next((e for e in self.trace if e.prompt.id == prompt_id), None)
            if gone is None:
                return self.find(prompt_id)
            found = gone.prompt
            self.late.add(prompt_id)
        self.queue = [p for p in self.queue if p.id != prompt_id]
        self.queue.insert(0, found)
        return found

    def answered(self, prompt_id: int) -> None:
        """Out of view while the answer is on its way; what we know of it (held, its span)
        stays until snitchd takes the answer (`remove`) or refuses it (`answer_refused`)."""
        found = self._take_out(prompt_id)
        if found is not None:
            self.sent[prompt_id] = found
        self.trace = [e for e in self.trace if e.prompt.id != prompt_id]

    def answer_refused(self, prompt_id: int, left_open: bool) -> PromptView | None:
        """snitchd did not take the answer. When it still holds the prompt (`left_open`: it
        refused the answer's words, or could not write its rule), the prompt comes back to the
        front to be answered again, and is returned; else it is gone. One whose deadline
        passed meanwhile goes to the waiting list's trace at the next tick, as snitchd gave it
        the default."""
        if not left_open:
            self.remove(prompt_id)
            return None
        found = self.sent.pop(prompt_id, None)
        if found is not None:
            self.queue.insert(0, found)
        return found

    # -- time --------------------------------------------------------------------------------
    def expire(self, prompt_id: int, reason: str) -> Expired | None:
        """snitchd decided it by default: it leaves the popup and the waiting list and becomes
        a row of the trace (once, whoever said it first: our clock or snitchd's Cancel)."""
        if prompt_id in self.late:
            return None
        prompt = self.remove(prompt_id)
        if prompt is None:
            return None
        if prompt_id == self.shown_id and self.interacting:
            self.ended, self.ghost = reason, prompt
        gone = Expired(prompt, reason, self.clock())
        self.trace.insert(0, gone)
        del self.trace[_TRACE:]
        return gone

    def show_next(self) -> PromptView | None:
        """Make the current prompt the shown one (unless the person holds on to an ended
        one); returns it when it is newly shown."""
        if self.ghost is not None and self.interacting:
            return None
        self.ended, self.ghost = "", None
        current = self.current
        if current is None:
            self.shown_id = None
            return None
        if current.id == self.shown_id:
            return None
        self.shown_id = current.id
        now = self.clock()
        span = self.spans.get(current.id, current.deadline - now)
        self.left = max(0.0, min(span, current.deadline - now))
        return current

    def tick(self) -> Step:
        now = self.clock()
        elapsed, self._ticked = max(0.0, now - self._ticked), now
        expired = [
            gone
            for p in [*self.queue, *self.aside]
            if p.deadline <= now
            and p.id not in self.late
            and not (p.id == self.shown_id and self.interacting)
            and (gone := self.expire(p.id, "default: timed out")) is not None
        ]
        set_aside: list[PromptView] = []
        shown = self.shown
        if self.interacting:
            self._paused = True
        elif shown is not None and shown.id in self.held and shown.id not in self.late:
            if self._paused:
                self._paused = False
                self.left = max(self.left, MIN_LEFT)
            else:
                self.left -= elapsed
            if self.left <= 0 and self.put_aside(shown.id) is not None:
                set_aside.append(shown)
        else:
            self._paused = False
        return Step(tuple(expired), tuple(set_aside))

    def seconds_left(self) -> float:
        """The shown prompt's countdown: to the waiting list if held, else to the default."""
        shown = self.shown
        if shown is None:
            return 0.0
        if shown.id in self.held:
            return max(0.0, self.left)
        return max(0.0, shown.deadline - self.clock())
