"""What snitchd and its log writer say to each other over their socket pair: two messages.

A module of its own so that neither side imports the other (`parent` starts the child, `child`
is the child); both pickle these records through `multiprocessing.connection`, and a pickle
names a record by its module, so they must live where both can import them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from snitchd.attempts import RowRef

__all__ = ["AppRate", "Batch", "Done"]


@dataclass(frozen=True, slots=True)
class Batch:
    """Log rows (`store.log_row` tuples), rule hit counts, newly seen apps, retries of
    attempts already logged (`attempts`); and on demand a pruning of the log to (now,
    max_age seconds, max_rows). `live`: someone watches the rates (a live view is open), so
    the writer reads the open flows' counters every second, not only a few times a minute."""

    seq: int
    rows: list[tuple[object, ...]] = field(default_factory=list)
    hits: dict[int, tuple[int, float]] = field(default_factory=dict)
    apps: dict[str, tuple[float, str | None]] = field(default_factory=dict)
    prune: tuple[float, float, int] | None = None
    retries: dict[RowRef, int] = field(default_factory=dict)  # retries to add to rows
    live: bool = False


@dataclass(frozen=True, slots=True)
class AppRate:
    """One app's traffic in the last rates window of `seconds` (`livebytes.Accounting.tick`):
    IP-layer bytes out and in, its open flows, its attempts and blocked ones in the window,
    and its byte totals since the writer started.
    `uid` is -1 for flows of no user (the kernel's)."""

    app: str
    uid: int
    bytes_out: int
    bytes_in: int
    seconds: float
    flows: int
    total_out: int
    total_in: int
    attempts: int = 0
    blocked: int = 0


@dataclass(frozen=True, slots=True)
class Done:
    """The answer to batch `seq`: nothing of it was written when `error` is set."""

    seq: int
    written: int = 0
    pruned: int = 0
    ends: int = 0
    error: str | None = None
    rates: tuple[AppRate, ...] = ()
    rates_seq: int = 0  # grows with each new rates window; 0: none yet
