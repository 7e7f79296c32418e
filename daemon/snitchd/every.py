"""A rate limit for what snitchd says: at most once per period, counting what it kept quiet.
What a user or a network can make happen per packet (an unreadable packet, a spoofed DNS
answer) must not become a journal line per packet."""

from __future__ import annotations

import math

__all__ = ["Every"]


class Every:
    """At most one event per `seconds`; counts the ones it let pass silently."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.last = -math.inf
        self.quiet = 0

    def due(self, now: float) -> bool:
        if now - self.last >= self.seconds or now < self.last:
            self.last = now
            return True
        self.quiet += 1
        return False
