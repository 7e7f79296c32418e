"""A user's D-Bus calls, paced: each is parsed and answered on snitchd's one event loop, the
loop that reads the queue, and any user may call (`Status`, their own log).

Measured before this (bench.disturb window 12): uid 65534 calling `Status` from 4 bus
connections with 8 calls outstanding on each, 2,100 calls a second, moved root's connects from
p50 0.79 / p99 3.3 ms to 6.1 / 28 ms (max 37 ms). Now a user (uid 1000 and up) makes at most
`dbus_calls_per_user` calls a second (a burst of as many) before the next waits its turn; a
client waiting for its replies is then slowed to that rate, and one that does not wait has at
most `WAITING_MAX` calls held, the next refused at once (`Busy`). Root and the system's uids
are not paced; the desktop user's notifier is, and never comes near the rate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from snitch_common.errors import Busy
from snitch_common.records import SYSTEM_UID_MAX

__all__ = ["WAITING_MAX", "CallPace"]

WAITING_MAX = 64  # calls of one user held for their turn; the next is refused
_USERS_MAX = 4096  # users remembered; past it, those whose turn is past are forgotten


@dataclass(slots=True)
class _Turns:
    due: float  # when the user's next call is due at the rate (the GCRA's arrival time)
    waiting: int = 0


class CallPace:
    """Per uid, the calls it made lately (`take` before each one)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._users: dict[int, _Turns] = {}

    async def take(self, uid: int, per_second: int) -> None:
        """Return when this call of `uid` may run, at `per_second` calls a second with a burst
        of as many (0: at once); raises Busy when `WAITING_MAX` of its calls wait already."""
        if per_second <= 0 or uid <= SYSTEM_UID_MAX:
            return
        now = self._clock()
        turns = self._users.get(uid)
        if turns is None:
            if len(self._users) >= _USERS_MAX:
                self._forget(now)
            turns = self._users[uid] = _Turns(now)
        interval = 1.0 / per_second
        due = max(turns.due, now)
        wait = due - now - (per_second - 1) * interval
        if wait > 0 and turns.waiting >= WAITING_MAX:
            raise Busy(
                f"uid {uid} made more than dbus_calls_per_user ({per_second}) calls a second "
                f"and has {WAITING_MAX} waiting: wait for their answers"
            )
        turns.due = due + interval
        if wait <= 0:
            return
        turns.waiting += 1
        try:
            await asyncio.sleep(wait)
        finally:
            turns.waiting -= 1

    def _forget(self, now: float) -> None:
        for uid in [uid for uid, t in self._users.items() if t.due <= now and not t.waiting]:
            del self._users[uid]
