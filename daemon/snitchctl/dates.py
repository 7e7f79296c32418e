"""Times as a person reads them: local time in snitchctl's text output (JSON keeps numbers).

A rule's text form stores `until=` as seconds since the epoch, which nobody can read; the text
snitchctl prints shows it as a local date and time (`until=2026-11-26T14:05`), which the rule
parser takes back, so `list-rules` output still pastes into `add-rule`.
"""

from __future__ import annotations

import re
import time

__all__ = ["local_time", "localise_rule_text"]

_UNTIL = re.compile(r"(?<=\buntil=)(\d+(?:\.\d*)?)(?=\s|$)")


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
