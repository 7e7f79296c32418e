"""Times as a person reads them: local time in snitchctl's text output (JSON keeps numbers).

A rule's text form stores `until=` as seconds since the epoch, which nobody can read; the text
snitchctl prints shows it as a local date and time (`until=2026-11-26T14:05`), and `add-rule`
turns that back into seconds before the rule parser sees it, so `list-rules` output still
pastes. The conversion lives here, not in the rule language: `snitch_common.rules` is pure (no
clock, no time zone files), and the time zone that matters is the one of the person typing.
"""

from __future__ import annotations

import re
import time
from datetime import datetime

from snitch_common.errors import RuleError

__all__ = ["delocalise_rule_text", "local_time", "localise_rule_text"]

_UNTIL = re.compile(r"(?<=\buntil=)(\d+(?:\.\d*)?)(?=\s|$)")
_UNTIL_LOCAL = re.compile(r"(?<=\buntil=)(\d{4}-\d\d-\d\dT[\d:]+)(?=\s|$)")


def local_time(epoch: float, seconds: bool = True) -> str:
    """`2026-11-26 14:05:09` (or without seconds) in this machine's time zone."""
    return time.strftime(
        "%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M", time.localtime(epoch)
    )


def localise_rule_text(text: str) -> str:
    """The rule text with `until=EPOCH` shown as `until=YYYY-MM-DDTHH:MM` (local time)."""
    return _UNTIL.sub(
        lambda m: time.strftime("%Y-%m-%dT%H:%M", time.localtime(float(m.group(1)))), text
    )


def delocalise_rule_text(text: str) -> str:
    """`until=YYYY-MM-DDTHH:MM` (local time, as snitchctl shows it) back to seconds."""

    def seconds(m: re.Match[str]) -> str:
        try:
            return repr(datetime.fromisoformat(m.group(1)).timestamp())
        except ValueError:
            raise RuleError(
                f"invalid until {m.group(1)!r}: use YYYY-MM-DDTHH:MM (local time) or seconds"
            ) from None

    return _UNTIL_LOCAL.sub(seconds, text)
