"""Rule changes, gathered and told: what becomes the `RulesChanged` signal (issue 19).

Every change to the rules snitchd holds passes one funnel (the firewall's hold and release of
one rule, or the swap of a whole set it read), whatever asked for it: a D-Bus call, snitchctl,
a prompt's answer, a rules.d file, expiry, a profile switch, a block list that changed what its
rules match, an edit of the store behind snitchd's back. That funnel notes the ids here; this
module turns them into at most a few signals a second (`MIN_GAP`): an import of 10,000 rules,
or a burst of prompt answers, is one or two signals, not 10,000.

A first change after a quiet spell is told on the loop's next turn (so the changes of one
turn, an import's, go out together); later ones wait until `MIN_GAP` after the last signal.
More than `MAX_NAMED` ids in one signal become `everything` (read them all): the ids held here
are bounded too. Nothing is gathered while nobody listens (before the bus is served).

Rule hits (counters) are not changes: they move with every flow, and ListRules reads them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from snitch_common.rulechange import MAX_NAMED, RulesChanged

__all__ = ["MIN_GAP", "RuleNews"]

log = logging.getLogger(__name__)

MIN_GAP = 0.25  # seconds between two signals at least: at most 4 a second


class RuleNews:
    def __init__(
        self, min_gap: float = MIN_GAP, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.listeners: list[Callable[[RulesChanged], None]] = []
        self.generation = 0  # signals told so far
        self._min_gap = min_gap
        self._clock = clock
        self._changed: set[int] = set()
        self._removed: set[int] = set()
        self._everything = False
        self._due: asyncio.TimerHandle | asyncio.Handle | None = None
        self._told = float("-inf")

    def changed(self, *rule_ids: int) -> None:
        """Rules added, or changed in any way a listener shows (text, note, on or off, what
        a list they name matches)."""
        if not self.listeners or self._everything:
            return
        self._removed.difference_update(rule_ids)
        self._changed.update(rule_ids)
        self._soon()

    def removed(self, *rule_ids: int) -> None:
        if not self.listeners or self._everything:
            return
        self._changed.difference_update(rule_ids)
        self._removed.update(rule_ids)
        self._soon()

    def everything(self) -> None:
        """The rules were read whole (an outside edit, a profile switch): read them all."""
        if not self.listeners:
            return
        self._everything = True
        self._changed.clear()
        self._removed.clear()
        self._soon()

    def _soon(self) -> None:
        if len(self._changed) + len(self._removed) > MAX_NAMED:
            self._everything = True
            self._changed.clear()
            self._removed.clear()
        if self._due is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # at start, before the loop and the bus: no one to tell
        wait = self._told + self._min_gap - self._clock()
        if wait > 0:
            self._due = loop.call_later(wait, self._tell)
        else:
            self._due = loop.call_soon(self._tell)

    def _tell(self) -> None:
        self._due = None
        if not (self._everything or self._changed or self._removed):
            return
        self.generation += 1
        news = RulesChanged(
            self.generation,
            tuple(sorted(self._changed)),
            tuple(sorted(self._removed)),
            self._everything,
        )
        self._changed, self._removed, self._everything = set(), set(), False
        self._told = self._clock()
        for listener in list(self.listeners):
            try:
                listener(news)
            except Exception:  # a listener's bug must not stop the others, or the rules
                log.exception("rule change listener failed")
