"""Places a rule can name as one word: destination classes (`to=lan`) and lists (`to=list:ads`).

`decide` asks `Places.contains` whether a flow's address (or one of the names it was resolved
from) is in a place; the answer comes from memory in a few µs whatever the size of a list, so it
runs on the packet loop. Everything that builds these structures (reading a parsed list of 1M
names, following the machine's addresses) runs elsewhere and swaps a finished object in with one
assignment, so a lookup sees the old place or the new one, never half of either. Pure: no I/O.

How a million names fit (bench/bench_lists.py measured it; the figures are in bench/README.md):
a set of the names as str costs ~100 B a name (the str object and its slot); here a name is
kept as a 64-bit hash, in one sorted `array('q')` with a small index of where each run of
leading bits starts: 8 bytes a name plus the index, and a lookup is one hash and a search of one
or two entries per suffix of the name. The hash is BLAKE2s keyed by a secret drawn for each set
when it is built, so nobody can compute a name that collides with a listed one (which, on an
allow list, would be a way in): a chance collision is n / 2**64 per lookup (5e-14 at 1M names).
The key goes with the set to the queue readers (issue 21). It was Python's `hash()`, keyed by
a secret of each process: in a reader no listed name ever matched, and a list rule passed
every name it should have blocked.
"""

from __future__ import annotations

import hashlib
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_network

__all__ = [
    "LAN_NETWORKS",
    "DomainSet",
    "ListInfo",
    "LoadedList",
    "NetworkSet",
    "Places",
]

IPAddress = IPv4Address | IPv6Address

# The local network whatever the machine's addresses: RFC 1918, RFC 6598 (carrier-grade NAT),
# link-local (RFC 3927, RFC 4291) and unique local IPv6 (RFC 4193). The subnets the machine is
# connected to are added as they come and go (snitchd/subnets.py).
LAN_NETWORKS = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "fe80::/10",
    "fc00::/7",
)
_SIGN = 1 << 63
_NO_LABELS = 1 << 30  # an empty set's fewest labels: more than any name has


class DomainSet:
    """Names, each also covering its subdomains (`example.org` matches `a.example.org`)."""

    __slots__ = ("_fewest", "_hashes", "_index", "_key", "_keyed", "_most", "_shift")

    def __init__(self, names: Iterable[str], key: bytes) -> None:
        """Hashes the names as they come: the names themselves are never all held at once
        (1M str objects took ~75 MB more at the peak of a load, which the allocator kept).
        `key`: a secret of this set (16 random bytes; the caller draws it, this module does
        no I/O)."""
        self._key = key
        self._keyed = hashlib.blake2s(digest_size=8, key=self._key)
        self._fewest, self._most = _NO_LABELS, 0
        unsorted = array("q", map(self._hash_counted, names))
        hashes = array("q")
        previous = None
        for h in sorted(unsorted):  # one transient list of ints (~40 MB at 1M), then freed
            if h != previous:
                hashes.append(h)
                previous = h
        del unsorted
        bits = max(1, min(24, len(hashes).bit_length()))
        self._shift = 64 - bits
        # _index[b] is where hashes whose top `bits` bits (as unsigned) are b start.
        index = array("I", bytes(4 * ((1 << bits) + 1)))
        bucket = 0
        for i, h in enumerate(hashes):
            b = (h + _SIGN) >> self._shift
            while bucket <= b:
                index[bucket] = i
                bucket += 1
        while bucket <= 1 << bits:
            index[bucket] = len(hashes)
            bucket += 1
        self._hashes = hashes
        self._index = index

    def __getstate__(self) -> tuple[array[int], array[int], bytes, int, int, int]:
        """Pickled for the queue readers without the hash object (which does not pickle)."""
        return self._hashes, self._index, self._key, self._shift, self._fewest, self._most

    def __setstate__(self, state: tuple[array[int], array[int], bytes, int, int, int]) -> None:
        self._hashes, self._index, self._key, self._shift, self._fewest, self._most = state
        self._keyed = hashlib.blake2s(digest_size=8, key=self._key)

    def _hash(self, name: str) -> int:
        keyed = self._keyed.copy()  # the key's block is hashed once, not once per name
        keyed.update(name.encode("utf-8", "surrogateescape"))
        return int.from_bytes(keyed.digest(), "little", signed=True)

    def _hash_counted(self, name: str) -> int:
        labels = name.count(".") + 1
        self._fewest, self._most = min(self._fewest, labels), max(self._most, labels)
        return self._hash(name)

    def __len__(self) -> int:
        return len(self._hashes)

    def has(self, name: str) -> bool:
        """Whether `name` itself is listed (not its parents)."""
        h = self._hash(name)
        b = (h + _SIGN) >> self._shift
        lo, hi = self._index[b], self._index[b + 1]
        i = bisect_left(self._hashes, h, lo, hi)
        return i < hi and self._hashes[i] == h

    def covers(self, name: str) -> bool:
        """Whether `name` or a domain it is in is listed. A suffix with more labels than the
        longest listed name, or fewer than the shortest, is not looked up: a keyed hash is
        ~0.6 µs, and most lists name no bare TLD."""
        labels = name.count(".") + 1
        at = 0
        while labels >= self._fewest:
            if labels <= self._most and self.has(name[at:]):
                return True
            at = name.find(".", at) + 1
            if at == 0:
                return False
            labels -= 1
        return False

    def bytes_used(self) -> int:
        return self._hashes.itemsize * len(self._hashes) + self._index.itemsize * len(self._index)


class NetworkSet:
    """Networks by prefix length: an address costs one set look-up per prefix length in use."""

    __slots__ = ("_count", "_v4", "_v6")

    def __init__(self, networks: Iterable[str]) -> None:
        by_length: dict[tuple[int, int], set[int]] = {}
        for text in networks:
            net = ip_network(text, strict=False)
            by_length.setdefault((net.version, net.prefixlen), set()).add(int(net.network_address))
        self._count = sum(len(s) for s in by_length.values())
        ordered = sorted(by_length.items(), reverse=True)
        self._v4 = tuple((_mask(32, n), frozenset(s)) for (v, n), s in ordered if v == 4)
        self._v6 = tuple((_mask(128, n), frozenset(s)) for (v, n), s in ordered if v == 6)

    def __len__(self) -> int:
        return self._count

    def has(self, addr: IPAddress) -> bool:
        value = int(addr)
        tables = self._v4 if addr.version == 4 else self._v6
        return any(value & mask in nets for mask, nets in tables)


def _mask(width: int, prefix: int) -> int:
    return ((1 << prefix) - 1) << (width - prefix)


@dataclass(frozen=True, slots=True)
class ListInfo:
    """What `lists show` says about a list snitchd holds."""

    domains: int
    networks: int
    loaded: float  # when snitchd swapped this copy in
    updated: float  # when the updater wrote it
    bytes: int


@dataclass(frozen=True, slots=True)
class LoadedList:
    """One list as the packet loop reads it."""

    name: str
    domains: DomainSet
    networks: NetworkSet
    info: ListInfo

    def contains(self, addr: IPAddress, names: frozenset[str]) -> bool:
        if len(self.networks) and self.networks.has(addr):
            return True
        return any(self.domains.covers(name) for name in names) if len(self.domains) else False


class Places:
    """The classes and lists, as the packet loop reads them. Each attribute is replaced whole,
    by one assignment on the loop, never changed in place; `on_change` runs after each change
    (the queue readers' copies are sent then, `readers.parent`: a list loaded applies to the
    next flow in every reader, as a rule change does)."""

    __slots__ = ("broadcast", "lan", "lists", "on_change")

    def __init__(self) -> None:
        self.lists: dict[str, LoadedList] = {}
        self.lan = NetworkSet(LAN_NETWORKS)
        self.broadcast: frozenset[IPAddress] = frozenset({IPv4Address("255.255.255.255")})
        self.on_change: Callable[[], None] | None = None

    def set_connected(self, subnets: Iterable[str], broadcasts: Iterable[IPAddress] = ()) -> None:
        """The machine's connected subnets and their broadcast addresses, as netlink says now."""
        self.lan = NetworkSet((*LAN_NETWORKS, *subnets))
        self.broadcast = frozenset({IPv4Address("255.255.255.255"), *broadcasts})
        self._changed()

    def put_list(self, loaded: LoadedList) -> None:
        self.lists = {**self.lists, loaded.name: loaded}
        self._changed()

    def drop_list(self, name: str) -> None:
        self.lists = {k: v for k, v in self.lists.items() if k != name}
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def contains(self, place: str, addr: IPAddress, names: frozenset[str]) -> bool:
        """Whether the flow to `addr`, resolved from `names`, goes to `place`. A list snitchd
        does not hold (not yet downloaded, removed) contains nothing."""
        if place.startswith("list:"):
            found = self.lists.get(place[5:])
            return found is not None and found.contains(addr, names)
        if place == "lan":
            return self.lan.has(addr)
        if place == "localhost":
            return addr.is_loopback
        if place == "multicast":
            return addr.is_multicast
        if place == "broadcast":
            return addr in self.broadcast
        return False
