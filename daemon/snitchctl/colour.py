"""Colour for snitchctl's tables: on a terminal only, never when `NO_COLOR` is set.

A pipe, a file or `--json` gets plain text, so scripts and `grep` see exactly what they did
before; colour is SGR escapes around words a person scans for (the verdict, a warning), never
the only way something is said (https://no-color.org: any non-empty `NO_COLOR` turns it off).
"""

from __future__ import annotations

import enum
import os
from typing import TextIO

__all__ = ["Colour", "Painter", "painter_for"]


class Colour(enum.Enum):
    """The few styles snitchctl uses, as SGR parameters."""

    GOOD = "32"  # green: allowed, running
    BAD = "31"  # red: denied, not running
    WARN = "33"  # yellow: rejected, degraded
    BOLD = "1"  # headings
    DIM = "2"  # secondary detail


class Painter:
    """Wraps text in SGR escapes when `enabled`, returns it unchanged otherwise."""

    __slots__ = ("enabled",)

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, colour: Colour) -> str:
        return f"\x1b[{colour.value}m{text}\x1b[0m" if self.enabled and text else text

    def verdict(self, action: str, width: int = 0) -> str:
        """An action word (allow, deny, reject), padded to `width` before colouring so that
        columns stay aligned whether or not escapes are added."""
        colour = {"allow": Colour.GOOD, "deny": Colour.BAD, "reject": Colour.WARN}.get(action)
        padded = action.ljust(width)
        return self(padded, colour) if colour else padded


def painter_for(stream: TextIO, environ: dict[str, str] | None = None) -> Painter:
    """Colour when `stream` is a terminal, `NO_COLOR` is unset or empty and TERM is not dumb."""
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR") or env.get("TERM") == "dumb":
        return Painter(False)
    try:
        return Painter(stream.isatty())
    except ValueError:  # a closed stream
        return Painter(False)
