"""What snitchd says on the bus when its rules change: the `RulesChanged` signal's record.

A window that shows rules (the Network Monitor's rules of an app) follows the signal instead of
reading every rule again every few seconds: at 100k rules that read was 100 pages each time,
for nothing most of the time. The signal says *which* rules changed and counts itself, nothing
more: no rule's text, no origin, no uid. Anyone may list the rules (`ListRules`), so ids and a
count tell a listener nothing it could not read; the texts stay behind the call, which a
listener makes if it cares.

`generation` counts the signals one snitchd sent (1, 2, ...). A listener that sees a gap, or a
step back (snitchd restarted: its count started again), missed something and reads everything
again, as it does on `everything` (too many ids to name, or the rules were read whole: an
outside edit of the store, a profile switch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dbus_fast import Variant

__all__ = ["MAX_NAMED", "RulesChanged"]

MAX_NAMED = 256  # ids one signal names at most; beyond, it says `everything`


@dataclass(frozen=True, slots=True)
class RulesChanged:
    generation: int  # this signal's number, from 1, per snitchd run
    changed: tuple[int, ...] = ()  # rules added or changed (text, note, on/off, what they match)
    removed: tuple[int, ...] = ()  # rules deleted (by a person, a file, expiry)
    everything: bool = False  # read them all: too many to name, or read whole by snitchd

    def to_bus(self) -> dict[str, Variant]:
        return {
            "generation": Variant("t", self.generation),
            "changed": Variant("at", list(self.changed)),
            "removed": Variant("at", list(self.removed)),
            "everything": Variant("b", self.everything),
        }

    @classmethod
    def from_bus(cls, body: dict[str, Any]) -> RulesChanged:
        """From the signal's a{sv} made plain (`bus.plain`); what is missing or of the wrong
        type reads as "read everything": a listener never trusts a partial answer."""
        generation, changed, removed = (
            body.get("generation"),
            body.get("changed"),
            body.get("removed"),
        )
        if (
            not isinstance(generation, int)
            or not isinstance(changed, list)
            or not isinstance(removed, list)
            or not all(isinstance(i, int) for i in [*changed, *removed])
        ):
            return cls(generation if isinstance(generation, int) else 0, everything=True)
        return cls(generation, tuple(changed), tuple(removed), bool(body.get("everything")))

    def follows(self, last: int) -> bool:
        """Whether this is the next signal after generation `last` (0: none seen yet, which
        any first signal follows: the listener read everything when it started)."""
        return last == 0 or self.generation == last + 1

    def touches(self, shown: set[int]) -> bool:
        """Whether a view showing the rules `shown` (and unknown new ones) must read again:
        anything added or changed may apply to it; a removal only if it showed that rule."""
        return self.everything or bool(self.changed) or not shown.isdisjoint(self.removed)
