"""A `Firewall` without a kernel or a bus, on a real store file, for unit tests: a clock the test
advances, and the firewall wired to its broker the way snitchd wires them. The packet side
(attributor) is absent; the event log is whatever recorder the test passes (`EventRecorder`
keeps what the firewall logs), and `Packet` stands for a queued packet and keeps its verdict."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from snitchd.attempts import RowRef
from snitchd.config import Config
from snitchd.firewall import Firewall
from snitchd.netfilter import ALLOW_MARK, DENY_MARK, MARK_MASK, REJECT_MARK
from snitchd.prompts import Broker
from snitchd.store import Decision, Store

__all__ = ["NOW", "Clock", "EventRecorder", "Packet", "make_firewall"]

NOW = 1_700_000_000.0


class Clock:
    """Time as the daemon reads it (`clock()`), standing at `now` until the test moves it."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def make_firewall(
    db: Path, clock: Clock, config: Config | None = None, log: object = None
) -> Firewall:
    """A firewall on the store file `db`, its broker attached (admin: uid 0); the caller closes
    `fw.store`."""
    store = Store(db)
    broker = Broker(clock=clock, timeout=5, max_open=10, is_admin=lambda uid: uid == 0)
    config = config if config is not None else Config(database=str(db))
    fw = Firewall(config, store, None, log, broker, clock=clock)  # type: ignore[arg-type]
    broker.attach(fw)
    return fw


class Packet:
    """A queued packet: its verdict ("accept", "drop", "reject") as the firewall gave it. A
    verdict is a repeat with its mark on the packet (our rules then act on it); a plain accept
    or drop is a fail mode's, or an unreadable packet's."""

    _BY_MARK: ClassVar[dict[int, str]] = {
        ALLOW_MARK: "accept", DENY_MARK: "drop", REJECT_MARK: "reject",
    }  # fmt: skip

    def __init__(self) -> None:
        self.verdict = ""
        self.mark = 0

    def accept(self) -> None:
        self.verdict = "accept"

    def repeat(self) -> None:
        assert self.mark & MARK_MASK in self._BY_MARK, "a repeat without a verdict's mark"
        self.verdict = self._BY_MARK[self.mark & MARK_MASK]

    def drop(self) -> None:
        self.verdict = "drop"

    def get_mark(self) -> int:
        return self.mark

    def set_mark(self, mark: int) -> None:
        self.mark = mark


class EventRecorder:
    """The event log as the firewall feeds it: rows, and retries of rows."""

    def __init__(self) -> None:
        self.rows: list[Decision] = []
        self.retries: dict[RowRef, int] = {}

    def record(self, decision: Decision) -> None:
        self.rows.append(decision)

    def retry(self, row: RowRef) -> None:
        self.retries[row] = self.retries.get(row, 0) + 1

    def note_app(self, exe: str, first_seen: float, sha256: str | None) -> None:
        pass
