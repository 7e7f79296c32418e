"""What the main process and a queue reader say to each other over their socket pair
(`multiprocessing.connection`: framing and pickling). Records only, no dicts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from multiprocessing.reduction import ForkingPickler
from typing import Any

from snitch_common.records import Flow, IPAddress, Process
from snitch_common.rules import Rule, RuleRecord
from snitchd.config import Config
from snitchd.decide import Verdict
from snitchd.dnssnoop import Resolution
from snitchd.events import Alert
from snitchd.names import NameCache, Owner
from snitchd.places import LoadedList, NetworkSet
from snitchd.procs.bpf import RecorderMaps
from snitchd.procs.hashes import FileKey

__all__ = [
    "AlertRaised",
    "Answer",
    "Batch",
    "Configure",
    "Forget",
    "HandOver",
    "Hashed",
    "Hold",
    "Learn",
    "Logged",
    "Message",
    "NewApp",
    "PlacesNow",
    "Ready",
    "Release",
    "Start",
    "Tally",
    "Whole",
]

# -- main → reader -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlacesNow:
    """The classes and lists rules name (`Places`), whole: they change rarely."""

    lan: NetworkSet
    broadcast: frozenset[IPAddress]
    lists: tuple[LoadedList, ...]


@dataclass(frozen=True, slots=True)
class Start:
    """The first message: what a reader needs before it binds its queue."""

    config: Config
    queue: int
    index: int
    profile: str | None
    rules: tuple[tuple[int, Rule], ...]
    places: PlacesNow
    names: NameCache
    known_apps: tuple[str, ...]
    log_level: int
    recorder: RecorderMaps | None  # snitchd's BPF recorder's maps (their fds passed along)
    named: str  # the socket match's map of named sockets, pinned ("": none, `socketmatch`)
    senders: str  # its map of queued datagrams' sockets, pinned ("": none)


@dataclass(frozen=True, slots=True)
class Hold:
    record: RuleRecord


@dataclass(frozen=True, slots=True)
class Release:
    rule_id: int


@dataclass(frozen=True, slots=True)
class Whole:
    """Every rule in force, after a reload or a profile switch."""

    profile: str | None
    rules: tuple[tuple[int, Rule], ...]


@dataclass(frozen=True, slots=True)
class Learn:
    """A DNS answer believed by the main process (`NameCache.learn`'s arguments)."""

    resolutions: tuple[Resolution, ...]
    now: float
    owner: Owner | None


@dataclass(frozen=True, slots=True)
class Forget:
    """An open flow was cut: its verdict is no longer kept for packets in flight."""

    flow: Flow


@dataclass(frozen=True, slots=True)
class Configure:
    config: Config


@dataclass(frozen=True, slots=True)
class Answer:
    """The verdict for a handed-over flow, and the flow and process to log it for (a prompt's
    own); None drops its packet unlogged (past a prompt's share)."""

    ticket: int
    given: tuple[Verdict, Flow, Process, str | None] | None


@dataclass(frozen=True, slots=True)
class Hashed:
    """An executable's digest, by its file's identity (`procs.hashes`): a reader that hashed a
    file tells snitchd, which tells the other readers, so each file is hashed once."""

    key: FileKey
    digest: str


# -- reader → main -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    """The queue is bound: the kernel rules may divert to it."""

    pid: int


@dataclass(frozen=True, slots=True)
class HandOver:
    """No rule covers this flow: the main process decides (mode, attempts, prompt)."""

    ticket: int
    flow: Flow
    proc: Process
    now: float
    host: str | None
    named: str | None


@dataclass(frozen=True, slots=True)
class Logged:
    """A verdict given: the main process writes its row (or counts a repeat or retry), timed
    when it reads this."""

    verdict: Verdict
    flow: Flow
    proc: Process
    host: str | None


@dataclass(frozen=True, slots=True)
class NewApp:
    proc: Process
    flow: Flow
    host: str | None
    now: float


@dataclass(frozen=True, slots=True)
class AlertRaised:
    alert: Alert


@dataclass(frozen=True, slots=True)
class Tally:
    """The reader's counters (`firewall.Counters` fields), sent every second."""

    seen: int
    accepted: int
    dropped: int
    rejected: int
    errors: int
    by_default: int
    unmarked: int
    forwarded: int
    attributed: tuple[tuple[str, int], ...]
    cpu_seconds: float


Message = HandOver | Logged | NewApp | AlertRaised | Hashed


@dataclass(frozen=True, slots=True)
class Batch:
    """What a reader's turn of its loop had to say, in order, in one message."""

    messages: tuple[Message, ...]


def _by_constructor(cls: type) -> Callable[[Any], tuple[type, tuple[object, ...]]]:
    names = tuple(f.name for f in fields(cls) if f.init)

    def reduce(obj: Any) -> tuple[type, tuple[object, ...]]:
        return cls, tuple([getattr(obj, name) for name in names])

    return reduce


# What crosses per flow is pickled as a call of its class with its fields: a frozen, slotted
# dataclass otherwise unpickles through `dataclasses._dataclass_setstate` (fields() and a
# setattr per field), which took 5.9 µs per message in the main process against 2.6 µs this
# way (20 rows of one process, this machine). Only `multiprocessing`'s pickler is told.
for _cls in (Flow, Process, Verdict, Logged, HandOver):
    ForkingPickler.register(_cls, _by_constructor(_cls))
