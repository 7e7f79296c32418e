"""The executables seen connecting, for the `new-app` alert: the store's `apps` table at start,
and each new one since.

Each new path raises an alert and writes a row, and a user can make paths without end (hard
links of one file under names of 4 KiB): 20,000 of them held 80 MB in snitchd and in every
queue reader. So each user may add at most NEW_APPS_PER_UID paths while snitchd runs; past
that, that user's new paths are neither kept nor announced (said once, in the journal).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

__all__ = ["NEW_APPS_PER_UID", "KnownApps"]

log = logging.getLogger(__name__)

NEW_APPS_PER_UID = 1000  # new executables a user may add while snitchd runs


class KnownApps:
    def __init__(self, known: Iterable[str] = ()) -> None:
        self._known = dict.fromkeys(known)
        self._added: dict[int | None, int] = {}

    def __contains__(self, exe: object) -> bool:
        return exe in self._known

    def __iter__(self) -> Iterator[str]:
        return iter(self._known)

    def __len__(self) -> int:
        return len(self._known)

    def add(self, exe: str, uid: int | None) -> bool:
        """Keep `exe`, a new path of `uid`'s; False (and nothing kept) once that user has added
        NEW_APPS_PER_UID since start: its flows are decided as before, only not announced."""
        added = self._added.get(uid, 0)
        if added >= NEW_APPS_PER_UID:
            return False
        self._added[uid] = added + 1
        if added + 1 == NEW_APPS_PER_UID:
            log.warning(
                "uid %s has started %d new programs that connect since snitchd started: its "
                "next ones are not announced as new apps",
                uid,
                NEW_APPS_PER_UID,
            )
        self._known[exe] = None
        return True
