"""Proposed rules: what `learn` mode saw, kept apart from the rules until an admin accepts them.

Each new (app, destination) pair a flow in `learn` mode brings is one proposal: the narrowest
rule that would have allowed it (`rule_for_answer`'s exact scope: the app, pinned as a prompt
answer would pin it, its script, the host name the flow carries or else its address, the port
and protocol). A pair seen again only counts up. The book is in memory, bounded (`max_total`
for everyone, a quarter of it per user who is not a system user), so that a program that
connects to a million destinations grows it no further; what is left out is counted. Writing it
to the store is the caller's business (the firewall does it from a worker thread). Pure: no I/O,
no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from snitch_common.errors import ProposalNotFound
from snitch_common.rules import Rule

__all__ = ["Proposal", "ProposalBook", "listed"]


@dataclass(frozen=True, slots=True)
class Proposal:
    """A rule `learn` mode proposes: `uid` owned the first flow it saw, `count` flows since."""

    id: int
    rule: Rule
    uid: int | None
    count: int
    first_seen: float
    last_seen: float


class ProposalBook:
    """The proposals, by id and by rule text, with what changed since the last `drain`."""

    def __init__(self, max_total: int = 1000, next_id: int = 1, system_uid_max: int = 999) -> None:
        """`system_uid_max`: uids up to it are system users (`prompts.SYSTEM_UID_MAX`), whose
        flows may fill the book; every other user gets a quarter of it."""
        self.max_total = max_total
        self.system_uid_max = system_uid_max
        self.next_id = next_id
        self._by_id: dict[int, Proposal] = {}
        self._by_text: dict[str, int] = {}
        self._per_uid: dict[int | None, int] = {}
        self._changed: set[int] = set()
        self._removed: set[int] = set()
        self.left_out = 0  # new pairs not proposed: the book (or the user's share) was full

    def load(self, proposals: Iterable[Proposal], next_id: int) -> None:
        """The stored proposals, at start; ids never go back below `next_id`."""
        for p in proposals:
            self._put(p)
            next_id = max(next_id, p.id + 1)
        self.next_id = max(self.next_id, next_id)

    def _put(self, p: Proposal) -> None:
        self._by_id[p.id] = p
        self._by_text[str(p.rule)] = p.id
        self._per_uid[p.uid] = self._per_uid.get(p.uid, 0) + 1

    def __len__(self) -> int:
        return len(self._by_id)

    def count_of(self, uid: int | None) -> int:
        """How many proposals flows of `uid` made (kept per uid: no walk of the book)."""
        return self._per_uid.get(uid, 0)

    def share(self, uid: int | None) -> int:
        """How many proposals flows of `uid` may have open: system flows may fill the book."""
        if uid is not None and uid > self.system_uid_max:
            return max(1, self.max_total // 4)
        return self.max_total

    def note(self, rule: Rule, uid: int | None, now: float) -> Proposal | None:
        """A flow `rule` would allow was let through: count it, or propose it if new. None
        when it is new and there is no room for it (counted in `left_out`)."""
        text = str(rule)
        known = self._by_text.get(text)
        if known is not None:
            p = self._by_id[known]
            p = replace(p, count=p.count + 1, last_seen=now)
            self._by_id[known] = p
            self._changed.add(known)
            return p
        if len(self._by_id) >= self.max_total or self._per_uid.get(uid, 0) >= self.share(uid):
            self.left_out += 1
            return None
        p = Proposal(self.next_id, rule, uid, 1, now, now)
        self.next_id += 1
        self._put(p)
        self._changed.add(p.id)
        return p

    def listed(self, uid: int | None = None) -> list[Proposal]:
        """Every proposal by id, or those whose first flow was `uid`'s."""
        return listed(self.snapshot(), uid)

    def snapshot(self) -> dict[int, Proposal]:
        """The proposals by id, copied in one step (a C-level dict copy: a worker thread may
        then sort and encode them while the loop goes on noting flows)."""
        return self._by_id.copy()

    def get(self, ids: Iterable[int]) -> list[Proposal]:
        """The proposals of these ids; `ProposalNotFound` names every id that is gone."""
        wanted = list(dict.fromkeys(ids))
        missing = [i for i in wanted if i not in self._by_id]
        if missing:
            raise ProposalNotFound(
                f"cannot use proposal{'s' if len(missing) > 1 else ''} "
                f"{', '.join(map(str, missing))}: no such proposal (accepted or rejected "
                "already? see: snitchctl proposals); nothing was changed"
            )
        return [self._by_id[i] for i in wanted]

    def remove(self, ids: Iterable[int]) -> None:
        for i in ids:
            p = self._by_id.pop(i, None)
            if p is None:
                continue
            del self._by_text[str(p.rule)]
            left = self._per_uid[p.uid] - 1
            if left:
                self._per_uid[p.uid] = left
            else:
                del self._per_uid[p.uid]
            self._changed.discard(i)
            self._removed.add(i)

    def drain(self) -> tuple[list[Proposal], list[int]]:
        """What changed and what was removed since the last drain (to write to the store)."""
        changed = [self._by_id[i] for i in sorted(self._changed) if i in self._by_id]
        removed = sorted(self._removed)
        self._changed.clear()
        self._removed.clear()
        return changed, removed

    def undrain(self, changed: list[Proposal], removed: list[int]) -> None:
        """A write of `drain`'s result failed: keep it for the next one."""
        self._changed.update(p.id for p in changed if p.id in self._by_id)
        self._removed.update(removed)


def listed(by_id: dict[int, Proposal], uid: int | None = None) -> list[Proposal]:
    """Proposals by id, or those whose first flow was `uid`'s."""
    return [p for _, p in sorted(by_id.items()) if uid is None or p.uid == uid]
