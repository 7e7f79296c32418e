"""Attempts remembered briefly: a program's retries are one attempt, asked and logged once.

A program whose connection was denied (or timed out at a prompt) tries again: its kernel resends
the SYN, then the program itself connects again a few seconds later (curl, wget, a browser, a
package manager). Each retry is a new flow to the kernel. Without a memory, each retry opened a
new prompt and wrote a new log row (one `wget` attempt counted 8 hits on its rule; `top` showed
curl with 73 connections, 65 of them one blocked attempt). So a decided attempt is remembered for
`window` seconds after its latest retry (at most `_LIFE_WINDOWS` windows after the first):

- the key is who tried and where: the verified executable with its sha256, its script, whether
  code not of it runs in it, its uid; the destination address, port and protocol. Only a process
  found and verified has a key: a uid-only flow, the kernel's, or an unverified executable never
  shares anything (it could be anyone of its user);
- a retry the rules decide keeps the rules' verdict: rules always come first, so a rule added or
  removed since wins, and a remembered verdict can never turn a rule's deny into an allow. Only
  when no rule covers the retry (it would be asked) does the remembered verdict apply, and only
  one that no rule gave (an answer "once", a prompt that timed out, no agent): a remembered rule
  verdict whose rule is gone is asked again;
- a retry that gets the same verdict as the attempt it repeats is counted on that attempt's log
  row (`retries`), not written as a row of its own, and counts no rule hit.

Bounded whatever a user does: at most `max_per_uid` attempts per uid (a user's oldest go first:
a program trying a million destinations pushes out its own user's memory, no one else's) and
`max_total` in all. Forgetting is always safe: a forgotten retry is decided and asked afresh.
Pure bookkeeping on the packet loop: no I/O, `now` passed in.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass

from snitch_common.records import Attribution, Flow, IPAddress, Process, Proto
from snitch_common.rules import Action

__all__ = ["Attempt", "AttemptKey", "Attempts", "RowRef", "attempt_key"]

_LIFE_WINDOWS = 6  # an attempt retried for longer than this many windows is a new attempt


@dataclass(frozen=True, slots=True)
class AttemptKey:
    """Who tried, and where to: the same key, the same attempt."""

    exe: str
    sha256: str | None
    script: str | None
    tampered: bool
    uid: int | None
    proto: Proto
    dst: IPAddress
    dport: int


@dataclass(frozen=True, slots=True)
class RowRef:
    """The log row of an attempt's first flow, as the log writer finds it again: its time and
    its flow's addresses and ports (the log is indexed on dst, dport, sport)."""

    time: float
    proto: str
    src: str
    sport: int
    dst: str
    dport: int


@dataclass(frozen=True, slots=True)
class Attempt:
    """An attempt's verdict (`rule_id` None: no rule gave it), its log row, and when it was
    first made and last retried."""

    action: Action
    rule_id: int | None
    reason: str
    row: RowRef
    first: float
    last: float


def attempt_key(flow: Flow, proc: Process) -> AttemptKey | None:
    """The key of `proc`'s attempt on `flow`; None for a sender that was not found and
    verified (it shares no verdict with anyone)."""
    if proc.attribution is not Attribution.PROCESS or proc.exe is None or not proc.verified:
        return None
    return AttemptKey(
        proc.exe,
        proc.sha256,
        proc.script_label,
        proc.tampered,
        proc.uid,
        flow.proto,
        flow.dst,
        flow.dport,
    )


class Attempts:
    def __init__(
        self, window: float = 10.0, max_total: int = 16384, max_per_uid: int = 2048
    ) -> None:
        if window < 0 or max_total < 1 or max_per_uid < 1:
            raise ValueError(
                f"Attempts: window {window} < 0, or max_total {max_total} or max_per_uid "
                f"{max_per_uid} < 1"
            )
        self.window = window
        self._max_total = max_total
        self._max_per_uid = max_per_uid
        # Least recently tried first. OrderedDicts, because the oldest are dropped one by one:
        # a dict would walk its deleted front slots to find the next (`snitch_common.recent`).
        self._attempts: OrderedDict[AttemptKey, Attempt] = OrderedDict()
        self._by_uid: dict[int | None, OrderedDict[AttemptKey, None]] = {}
        self.retries = 0  # retries folded into an attempt since start
        self.pushed_out = 0  # attempts forgotten early to keep within the bounds

    def __len__(self) -> int:
        return len(self._attempts)

    def configure(self, window: float) -> None:
        self.window = window
        if window == 0:
            self.clear()

    def clear(self) -> None:
        """Forget every attempt: what decides a flow no rule covers changed (the default action
        on reload, the mode), so a remembered verdict may no longer be what a retry would get."""
        self._attempts.clear()
        self._by_uid.clear()

    def recall(self, key: AttemptKey | None, now: float) -> Attempt | None:
        """The attempt `key` repeats, if it is still remembered."""
        if key is None:
            return None
        found = self._attempts.get(key)
        if found is None:
            return None
        if not (0 <= now - found.last < self.window and now - found.first < self._life):
            self._forget(key)
            return None
        return found

    def retried(self, key: AttemptKey, attempt: Attempt, now: float) -> None:
        """`attempt` was tried again with the same verdict: its window starts again."""
        self.retries += 1
        self._put(key, dataclasses.replace(attempt, last=now))

    def remember(
        self,
        key: AttemptKey,
        action: Action,
        rule_id: int | None,
        reason: str,
        row: RowRef,
        now: float,
    ) -> None:
        """A new attempt was decided and logged as `row`."""
        if self.window == 0:
            return
        self._put(key, Attempt(action, rule_id, reason, row, now, now))

    @property
    def _life(self) -> float:
        return self.window * _LIFE_WINDOWS

    def _put(self, key: AttemptKey, attempt: Attempt) -> None:
        self._forget(key)
        self._attempts[key] = attempt
        mine = self._by_uid.setdefault(key.uid, OrderedDict())
        mine[key] = None
        while len(mine) > self._max_per_uid:
            self._forget(next(iter(mine)))
            self.pushed_out += 1
        self._expire(attempt.last)
        while len(self._attempts) > self._max_total:
            self._forget(next(iter(self._attempts)))
            self.pushed_out += 1

    def _forget(self, key: AttemptKey) -> None:
        if self._attempts.pop(key, None) is None:
            return
        mine = self._by_uid.get(key.uid)
        if mine is not None:
            mine.pop(key, None)
            if not mine:
                del self._by_uid[key.uid]

    def _expire(self, now: float) -> None:
        for _ in range(8):  # a few per call, from the oldest end: bounded work per packet
            oldest = next(iter(self._attempts.items()), None)
            if oldest is None or now - oldest[1].last < self.window:
                return
            self._forget(oldest[0])
