"""Which names each address was resolved from, and for whom: the packet path's name lookup.

`dnswatch` learns names only from answers it believes, each for the owner of the query it
answers (`Owner`): the process that asked, or only its user when the process is not known, or
everyone when a system service asked (a caching resolver such as systemd-resolved or nscd asks
on behalf of every program, and does not say for whom). A flow is then labelled only with the
names its own process resolved, its user's names of unknown process, and the shared ones: a name
one program resolved does not label another program's flows, in prompts, the log or host rules.

Memory is bounded by bytes, not only by entries (a name is up to ~1 KB as text, and 100,000
addresses of 32 long names each came to ~1.2 GB): `max_bytes` bounds an estimate of what the
cache holds (`COST_*`, checked against tracemalloc by tests/unit/test_names.py), the least
recently learnt addresses going first; one user's names may take at most a quarter of it, and
so may the shared ones, so a user resolving millions of names pushes out their own, not
everybody's (through a caching resolver, the shared ones: not any user's own). Nothing here does I/O
or reads the clock (`now` is passed in); lookups are a few dict gets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from snitch_common.records import Attribution, IPAddress, Process
from snitchd.dnssnoop import Resolution

__all__ = ["COST_ENTRY", "COST_NAME", "SHARED", "NameCache", "Owner"]

_MAX_NAMES = 32  # names kept per address and owner
_MAX_OWNERS = 64  # owners kept per address; the least recently learnt goes first
_SWEEP = 8  # fully expired addresses dropped from the oldest end per `learn`
_EMPTY: frozenset[str] = frozenset()
_FIND_CHUNK = 2000  # addresses `find` reads between two yields (~1 ms)
_ANY = -1  # an owner key's pid for "any process of this uid", uid for "everyone"
# What one entry (an address and an owner) and one name in it cost, in bytes, beyond the name's
# own characters: the dict slots and objects holding them (CPython 3.11, 64-bit; measured with
# tracemalloc, then rounded up).
COST_ENTRY = 900
COST_NAME = 200


@dataclass(frozen=True, slots=True)
class Owner:
    """For whom a name was learnt: `pid` None means any process of `uid`."""

    uid: int
    pid: int | None = None


SHARED: Owner | None = None  # names every flow may carry (see the module docstring)

_Key = tuple[int, int]  # (uid or _ANY, pid or _ANY)


def _key(owner: Owner | None) -> _Key:
    if owner is None:
        return (_ANY, _ANY)
    return (owner.uid, _ANY if owner.pid is None else owner.pid)


class _Entry:
    """The names of one address for one owner, each with the time it expires."""

    __slots__ = ("cost", "frozen", "last", "names", "queried", "until")

    def __init__(self) -> None:
        self.names: dict[str, float] = {}  # name → expires at, least recently learnt first
        self.queried: list[str] = []  # names that began a chain (for `best`), likewise
        # What `names()` returns until `until`, built on the first lookup: many addresses
        # learnt are never connected to (the other A records, AAAA on an IPv4-only host).
        self.frozen: frozenset[str] | None = None
        self.until = math.inf  # when the first name expires
        self.last = -math.inf  # when the last name expires
        self.cost = COST_ENTRY

    def add(self, names: tuple[str, ...], expires: float) -> None:
        for name in names:
            old = self.names.pop(name, None)  # re-inserted: now the most recently learnt
            self.names[name] = expires if old is None else max(old, expires)
        if names:
            if names[0] in self.queried:
                self.queried.remove(names[0])
            self.queried.append(names[0])
        while len(self.names) > _MAX_NAMES:
            oldest = next(iter(self.names))
            del self.names[oldest]
            if oldest in self.queried:
                self.queried.remove(oldest)
        self._refresh()

    def prune(self, now: float) -> None:
        self.names = {n: e for n, e in self.names.items() if e > now}
        self.queried = [n for n in self.queried if n in self.names]
        self._refresh()

    def _refresh(self) -> None:
        self.frozen = None if self.names else _EMPTY
        self.until = min(self.names.values(), default=math.inf)
        self.last = max(self.names.values(), default=-math.inf)
        self.cost = COST_ENTRY + sum(COST_NAME + len(n) for n in self.names)


class _Slot:
    """Every owner's names of one address."""

    __slots__ = ("entries", "last", "until")

    def __init__(self) -> None:
        self.entries: dict[_Key, _Entry] = {}  # least recently learnt first
        self.until = math.inf
        self.last = -math.inf

    def refresh(self) -> None:
        self.until = min((e.until for e in self.entries.values()), default=math.inf)
        self.last = max((e.last for e in self.entries.values()), default=-math.inf)


class NameCache:
    """Address → the names it was resolved from, per owner, each kept for its TTL plus `grace`.

    `grace` covers programs that connect a little after the TTL ran out (TTL 0 answers, slow
    starts, long-lived resolver caches). Memory is bounded: `max_bytes` (see the module
    docstring), at most `max_addresses` addresses, 64 owners per address and 32 names per
    address and owner (the least recently learnt go first). Expired names are dropped lazily,
    on lookup and on `learn`; `len()` may count addresses not yet dropped.
    """

    def __init__(
        self, grace: float = 60.0, max_addresses: int = 100_000, max_bytes: int = 32 << 20
    ) -> None:
        if grace < 0 or max_addresses < 1 or max_bytes < COST_ENTRY * 4:
            raise ValueError(
                f"NameCache: grace {grace} < 0, max_addresses {max_addresses} < 1 or "
                f"max_bytes {max_bytes} < {COST_ENTRY * 4}"
            )
        self._grace = grace
        self._max_addresses = max_addresses
        self._max_bytes = max_bytes
        self._slots: dict[IPAddress, _Slot] = {}  # least recently learnt first
        # Each uid's entries, least recently learnt first, and what they cost.
        self._by_uid: dict[int, dict[tuple[IPAddress, _Key], None]] = {}
        self._uid_bytes: dict[int, int] = {}
        self.bytes = 0  # the estimate `max_bytes` bounds

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    def configure(self, grace: float, max_bytes: int) -> None:
        """New settings (a reload): names already learnt keep their expiry; a smaller bound
        takes effect at once."""
        if grace < 0 or max_bytes < COST_ENTRY * 4:
            raise ValueError(f"NameCache: grace {grace} < 0 or max_bytes {max_bytes} too small")
        self._grace, self._max_bytes = grace, max_bytes
        while self._slots and self.bytes > max_bytes:
            self._drop_slot(next(iter(self._slots)))

    def learn(
        self, resolutions: Iterable[Resolution], now: float, owner: Owner | None = SHARED
    ) -> None:
        """Keep the names of `resolutions` for `owner` (`SHARED`: for every flow)."""
        key = _key(owner)
        slots = self._slots
        for resolution in resolutions:
            address = resolution.address
            slot = slots.pop(address, None)
            if slot is None:
                slot = _Slot()
            slots[address] = slot  # now the most recently learnt
            entry = slot.entries.pop(key, None)
            if entry is None:
                entry = _Entry()
                self._charge(key[0], entry.cost)
            before = entry.cost
            if entry.until <= now:
                entry.prune(now)
            entry.add(resolution.names, now + resolution.ttl + self._grace)
            slot.entries[key] = entry
            self._charge(key[0], entry.cost - before)
            mine = self._by_uid.setdefault(key[0], {})
            mine.pop((address, key), None)
            mine[(address, key)] = None
            while len(slot.entries) > _MAX_OWNERS:
                self._drop_entry(address, slot, next(iter(slot.entries)))
            slot.refresh()
        self._bound(key[0], now)

    def names(self, address: IPAddress, now: float, proc: Process | None = None) -> frozenset[str]:
        """Every unexpired name of `address` that `proc`'s flows may carry (empty if none): its
        own, its uid's of unknown process, the shared ones; `proc` None: the shared ones only.
        The packet path's lookup: a few dict gets unless something expired since the last call."""
        slot = self._live(address, now)
        if slot is None:
            return _EMPTY
        found = _EMPTY
        for key in _lookup_keys(proc):
            entry = slot.entries.get(key)
            if entry is None:
                continue
            frozen = entry.frozen
            if frozen is None:
                frozen = entry.frozen = frozenset(entry.names)
            found = frozen if not found else found | frozen
        return found

    def every_name(self, address: IPAddress, now: float) -> frozenset[str]:
        """Every unexpired name of `address`, whoever learnt it: to find the flows a new block
        list may cover (issue 18), never to decide one (that takes `names`)."""
        slot = self._slots.get(address)
        if slot is None:
            return _EMPTY
        return frozenset(
            name
            for entry in slot.entries.values()
            for name, expires in entry.names.items()
            if expires > now
        )

    def best(self, address: IPAddress, now: float, proc: Process | None = None) -> str | None:
        """The name to show for `address` to `proc`: the queried name (not a CNAME target) most
        recently learnt by its own process, else its uid, else shared; None if none."""
        slot = self._live(address, now)
        if slot is None:
            return None
        for key in _lookup_keys(proc):
            entry = slot.entries.get(key)
            if entry is not None and entry.queried:
                return entry.queried[-1]
        return None

    def own(self, address: IPAddress, now: float, proc: Process) -> str | None:
        """The name `proc` itself resolved `address` from (the queried name it learnt most
        recently), or None: not its user's names of unknown process, nor the shared ones, which
        another program may have looked up (issue 15). What a host answer may name."""
        if proc.attribution is not Attribution.PROCESS or proc.pid is None or proc.uid is None:
            return None
        slot = self._live(address, now)
        if slot is None:
            return None
        entry = slot.entries.get((proc.uid, proc.pid))
        return entry.queried[-1] if entry is not None and entry.queried else None

    def find(
        self, name: str, now: float, uid: int | None, pid: int | None = None
    ) -> Iterator[tuple[IPAddress, frozenset[str]] | None]:
        """Where `name` was resolved to, for `snitchctl explain --dst NAME`: the most recently
        learnt address whose names of `uid` (of process `pid`, else of any of its processes) or
        shared hold it, with the names learnt with it (its CNAME chain). A scan of every
        address, newest first: it yields None every `_FIND_CHUNK` addresses so that its caller
        can let the loop run, and ends after the first find (or none)."""
        for i, address in enumerate(reversed(list(self._slots))):
            if i and i % _FIND_CHUNK == 0:
                yield None
            slot = self._live(address, now)
            if slot is None:
                continue
            chain: set[str] = set()
            for key, entry in slot.entries.items():
                mine = key == (_ANY, _ANY) or (
                    uid is not None and key[0] == uid and (pid is None or key[1] in (pid, _ANY))
                )
                if mine and name in entry.names:
                    chain.update(entry.names)
            if chain:
                yield address, frozenset(chain)
                return

    def __len__(self) -> int:
        return len(self._slots)

    def _charge(self, uid: int, delta: int) -> None:
        self.bytes += delta
        self._uid_bytes[uid] = self._uid_bytes.get(uid, 0) + delta

    def _drop_entry(self, address: IPAddress, slot: _Slot, key: _Key) -> None:
        entry = slot.entries.pop(key)
        self._charge(key[0], -entry.cost)
        mine = self._by_uid.get(key[0])
        if mine is not None:
            mine.pop((address, key), None)
            if not mine:
                del self._by_uid[key[0]]
                self._uid_bytes.pop(key[0], None)

    def _drop_slot(self, address: IPAddress) -> None:
        slot = self._slots.pop(address)
        for key in list(slot.entries):
            self._drop_entry(address, slot, key)

    def _bound(self, uid: int, now: float) -> None:
        slots = self._slots
        for _ in range(_SWEEP):
            oldest = next(iter(slots.items()), None)
            if oldest is None or oldest[1].last > now:
                break
            self._drop_slot(oldest[0])
        # A user's names, and the shared ones, take at most a quarter each: a user who resolves
        # name after name, directly or through the system's resolver (whose own queries' names
        # are the shared ones), pushes out their own or the shared names, not everybody's.
        mine = self._by_uid.get(uid)
        while mine and self._uid_bytes.get(uid, 0) > self._max_bytes // 4:
            address, key = next(iter(mine))
            self._drop_from(address, key)
            mine = self._by_uid.get(uid)
        while slots and (len(slots) > self._max_addresses or self.bytes > self._max_bytes):
            self._drop_slot(next(iter(slots)))

    def _drop_from(self, address: IPAddress, key: _Key) -> None:
        slot = self._slots[address]
        self._drop_entry(address, slot, key)
        if slot.entries:
            slot.refresh()
        else:
            del self._slots[address]

    def _live(self, address: IPAddress, now: float) -> _Slot | None:
        """`address`'s slot with what expired by `now` pruned first (only when something has:
        `slot.until`), or None if it has no names left."""
        slot = self._slots.get(address)
        if slot is None or now < slot.until:
            return slot
        return self._prune(address, slot, now)

    def _prune(self, address: IPAddress, slot: _Slot, now: float) -> _Slot | None:
        for key, entry in list(slot.entries.items()):
            if entry.until <= now:
                before = entry.cost
                entry.prune(now)
                self._charge(key[0], entry.cost - before)
                if not entry.names:
                    self._drop_entry(address, slot, key)
        if not slot.entries:
            del self._slots[address]
            return None
        slot.refresh()
        return slot


def _lookup_keys(proc: Process | None) -> tuple[_Key, ...]:
    """The owner keys whose names `proc`'s flows may carry, narrowest first."""
    if proc is None or proc.uid is None:
        return ((_ANY, _ANY),)
    if proc.attribution is Attribution.PROCESS and proc.pid is not None:
        return ((proc.uid, proc.pid), (proc.uid, _ANY), (_ANY, _ANY))
    return ((proc.uid, _ANY), (_ANY, _ANY))
