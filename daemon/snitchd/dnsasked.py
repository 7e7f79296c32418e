"""The DNS queries this machine sent, not yet answered: what a believed answer must reply to.

An answer is believed only if it replies to a query seen leaving: the same transport, the same
two addresses and ports (turned round), the same DNS id and the same question. The kernel's
conntrack already checks the addresses and ports of a reply (only answers of ESTABLISHED flows
in the reply direction reach the answer queue); the id and question are checked here, and the
first answer to a query uses it up, so a forged second answer is "unasked" even on a live flow.

Bounded whatever programs do: `max_total` queries at most, `max_per_uid` per user (a user's
oldest query goes first, so a program flooding queries pushes out its own user's, nobody
else's), and a query older than `max_age` seconds is forgotten (glibc gives up after 5 s per
try, 2 tries by default). Pure bookkeeping on the packet loop: no I/O, `now` passed in.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass

from snitch_common.records import IPAddress, Proto
from snitchd.dnssnoop import Question

__all__ = ["Asked", "QueryKey", "QueryLog"]


@dataclass(frozen=True, slots=True)
class QueryKey:
    """A query as its answer will show it: this machine's side, the server's side, the id."""

    proto: Proto
    local: IPAddress
    lport: int
    remote: IPAddress
    rport: int
    id: int


@dataclass(frozen=True, slots=True)
class Asked:
    """A query seen leaving. `owner` is what attribution gave for its socket (a `Process`, or
    the `Lookup` still under way): opaque here. `uid` is the socket's uid (-1 unknown).
    `answered`: an answer has used it up (kept until `max_age`, to tell a resent answer)."""

    question: Question
    owner: object
    uid: int
    at: float
    answered: bool = False


class QueryLog:
    def __init__(
        self, max_total: int = 8192, max_per_uid: int = 1024, max_age: float = 30.0
    ) -> None:
        if max_total < 1 or max_per_uid < 1 or max_age <= 0:
            raise ValueError(
                f"QueryLog: max_total {max_total}, max_per_uid {max_per_uid} and max_age "
                f"{max_age} must be positive"
            )
        self._max_total = max_total
        self._max_per_uid = max_per_uid
        self._max_age = max_age
        # Oldest first; OrderedDicts, because the oldest are dropped one by one: a dict would
        # walk its deleted front slots to find the next (`snitch_common.recent`).
        self._queries: OrderedDict[QueryKey, Asked] = OrderedDict()
        self._by_uid: dict[int, OrderedDict[QueryKey, None]] = {}  # each uid's, oldest first
        self.pushed_out = 0  # queries forgotten unanswered to keep within the bounds

    def __len__(self) -> int:
        return len(self._queries)

    def record(self, key: QueryKey, asked: Asked) -> None:
        """A query left: remember it (a resent query with the same key replaces the first)."""
        self._forget(key)
        self._queries[key] = asked
        mine = self._by_uid.setdefault(asked.uid, OrderedDict())
        mine[key] = None
        while len(mine) > self._max_per_uid:
            self._forget(next(iter(mine)))
            self.pushed_out += 1
        self._expire(asked.at)
        while len(self._queries) > self._max_total:
            self._forget(next(iter(self._queries)))
            self.pushed_out += 1

    def take(self, key: QueryKey, question: Question | None, now: float) -> Asked | None:
        """The query `key` answers, now used up; None when no live query has that key and
        question (the answer came unasked, or late, or asks something else). A query already
        used up is returned with `answered` set: the caller learns nothing from it (a server
        or a client resent, or a forged answer lost the race)."""
        asked = self._queries.get(key)
        if asked is None or asked.question != question or now - asked.at > self._max_age:
            return None
        if not asked.answered:
            self._queries[key] = dataclasses.replace(asked, answered=True)
        return asked

    def _forget(self, key: QueryKey) -> None:
        asked = self._queries.pop(key, None)
        if asked is None:
            return
        mine = self._by_uid.get(asked.uid)
        if mine is not None:
            mine.pop(key, None)
            if not mine:
                del self._by_uid[asked.uid]

    def _expire(self, now: float) -> None:
        for _ in range(8):  # a few per call: the oldest end, bounded work per packet
            oldest = next(iter(self._queries.items()), None)
            if oldest is None or now - oldest[1].at <= self._max_age:
                return
            self._forget(oldest[0])
