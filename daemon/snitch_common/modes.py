"""The mode vocabulary: what snitchd does with a flow that no rule covers, in words every program
speaks (`snitchctl mode`, the tray's Pause entries, `GetMode`/`SetMode` over D-Bus, the log).

A mode is machine-wide and chosen by an admin: `ask` (a person is asked, or the default action
applies), `silent-allow` and `silent-deny` (nobody is asked; the flow is allowed or denied and
logged), `learn` (allowed, and each new app and destination becomes a proposed rule). A mode may
hold for a while only (`--for 15m`): its deadline is wall-clock time, so a suspend does not
stretch it (OpenSnitch's timed rules count monotonic time: their issue #1663). Pure: no I/O.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from snitch_common.errors import ModeError

__all__ = ["MAX_FOR_SECONDS", "Mode", "ModeState", "format_seconds", "parse_for", "parse_mode"]

# A time limit longer than a year is a typo (or 'until I resume' said the long way).
MAX_FOR_SECONDS = 366 * 86400
_FOR_RE = re.compile(r"^(\d{1,8})([smhd]?)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "": 60}


class Mode(enum.Enum):
    """What happens to a flow that no rule covers."""

    ASK = "ask"
    SILENT_ALLOW = "silent-allow"
    SILENT_DENY = "silent-deny"
    LEARN = "learn"


def parse_mode(text: str) -> Mode:
    """A mode by its name; `ModeError` lists the names there are."""
    try:
        return Mode(text.strip().lower())
    except ValueError:
        choices = ", ".join(m.value for m in Mode)
        raise ModeError(f"unknown mode {text!r}: use one of {choices}") from None


def parse_for(text: str) -> float:
    """A time limit as seconds: `N` with s, m (the default), h or d; 0 is refused (say no
    time limit instead)."""
    found = _FOR_RE.match(text.strip().lower())
    if found is None:
        raise ModeError(
            f"invalid time limit {text!r}: use N followed by s, m, h or d (e.g. 15m, 1h)"
        )
    seconds = int(found.group(1)) * _UNITS[found.group(2)]
    if not 0 < seconds <= MAX_FOR_SECONDS:
        raise ModeError(
            f"invalid time limit {text!r}: give more than 0 and at most 366d "
            "(for no limit, leave --for out)"
        )
    return float(seconds)


def format_seconds(seconds: float) -> str:
    """`905` → `15m 5s`: how long a time-limited mode has left, as a person reads it."""
    left = max(0, round(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if left >= size:
            parts.append(f"{left // size}{unit}")
            left %= size
    if left or not parts:
        parts.append(f"{left}s")
    return " ".join(parts)


@dataclass(frozen=True, slots=True)
class ModeState:
    """The mode in force, since when and by whom; with `until` (wall-clock time) it is
    time-limited and `previous` comes back then."""

    mode: Mode
    since: float = 0.0
    by: str = ""
    until: float | None = None
    previous: Mode | None = None

    def describe(self, now: float) -> str:
        if self.until is None:
            return self.mode.value
        back = self.previous.value if self.previous is not None else Mode.ASK.value
        return f"{self.mode.value} for {format_seconds(self.until - now)} more, then {back}"
