"""The decision core: which rule covers a flow, and what to do with it.

Pure: no I/O, no clock, no root; the time comes in as `now`. A test checks that this module
imports nothing that could do I/O.

Precedence, in one sentence (README and docs/rules.md say the same): **the most specific rule
wins — one naming the app (for a container: the container, then its runtime) beats one that
does not, then one naming the script, then the direct
parent, then any parent, then one naming the user, then the narrowest
destination (an address or host beats a domain, a domain beats a network, a longer prefix beats a
shorter one, and a class or list is the widest network), then the narrowest port range, then
naming a protocol, then an interface, then a time window — and on a full tie reject beats deny
beats allow.** A rule outside its time window (`during=`, `days=`, in local time) matches
nothing, as if it were not there. Between otherwise equal rules the newest wins, so the order is
total and `explain` can always name one winner.

Who a process is, as far as a rule may trust it (issue 14): an executable snitchd could not find
at its path (`Process.verified` False) matches no rule naming an app; a process running code not
of its executable (`Process.tampered`: a preloaded library, a tracer) matches no *allow* rule that
names who it is (app, script or parent) — deny and reject rules still match it; a script whose
interpreter was handed code through its environment matches no rule naming the script.

Containers (issue 16): a container's process matches no rule naming an app (its executable is
the container's file), `user=` names the container's owner (`Process.owner_uid`), and
`container=` and `runtime=` rules match containers' flows only. Rules naming nobody (a
destination, a port) hold for containers too.
"""

from __future__ import annotations

import dataclasses
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from snitch_common.records import Flow, Process, Proto
from snitch_common.rules import Action, Lifetime, Rule, container_matches
from snitchd.places import Places

__all__ = [
    "PRECEDENCE",
    "Ask",
    "Explanation",
    "LocalTime",
    "RuleSet",
    "StricterRules",
    "Verdict",
    "decide",
    "set_local_time",
    "specificity",
    "utc_time",
    "varies",
]

LocalTime = Callable[[float], tuple[int, int]]  # Unix time -> (weekday, 0 = Monday; minute of day)


def utc_time(now: float) -> tuple[int, int]:
    """`now` as UTC weekday and minute (1970-01-01 was a Thursday): the default until snitchd
    gives the machine's local time (`set_local_time`)."""
    days, seconds = divmod(int(now), 86400)
    return (days + 3) % 7, seconds // 60


_local_time: LocalTime = utc_time


def set_local_time(local: LocalTime) -> None:
    """How time windows (`during=`, `days=`) read local time: snitchd sets the machine's
    (time.localtime, process-wide as TZ is), tests a fixed zone. Kept out of this module so
    that it stays free of clocks."""
    global _local_time  # noqa: PLW0603 - one setting for the process, like its TZ
    _local_time = local


PRECEDENCE = (
    "the most specific rule wins: naming the app (for a container: the container, then its "
    "runtime) beats not naming it, then naming the script, "
    "then the direct parent, then any parent, then naming the user, "
    "then the narrowest destination (address or host > domain > network, longer prefix first, "
    "a class or list such as lan or list:ads being the widest network), "
    "then the narrowest port range, then naming a protocol, then an interface, "
    "then a time window (a rule outside its window matches nothing); "
    "on a full tie reject beats deny beats allow, and then the newest rule"
)

_ACTION_RANK = {Action.ALLOW: 0, Action.DENY: 1, Action.REJECT: 2}
_Key = tuple[int, ...]
# Buckets of up to this many rules are walked, not indexed. Measured on bench/manyrules.py (10k
# apps of 10 rules): indexing them too cost 28 MB, for 3.4 -> 1.2 µs when none of 10 matches.
_INDEX_ABOVE = 16


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with a flow now. `rule_id` is None when the default action decided."""

    action: Action
    rule_id: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Ask:
    """No rule covers the flow: someone must be asked, or the default action applies."""


@dataclass(frozen=True, slots=True)
class Explanation:
    """Every rule that matches a flow, best first; the first one wins."""

    matches: tuple[tuple[int, Rule], ...]

    @property
    def winner(self) -> tuple[int, Rule] | None:
        return self.matches[0] if self.matches else None


def specificity(rule: Rule, rule_id: int = 0) -> _Key:
    """The sort key behind the precedence sentence: larger is more specific."""
    if rule.host is not None:
        dst_tier, dst_sub = (3, 0) if not rule.host.startswith("*.") else (2, rule.host.count("."))
    elif rule.dst is not None:
        prefix = rule.dst.prefixlen + (96 if rule.dst.version == 4 else 0)
        # + 1: a class or list (below) ranks under every network written out, ::/0 included.
        dst_tier, dst_sub = (3, 0) if prefix == 128 else (1, prefix + 1)
    elif rule.place is not None:
        # A class or a list is a network, the widest one: any network written out beats it.
        dst_tier, dst_sub = 1, 0
    else:
        dst_tier, dst_sub = 0, 0
    span = 65536 if rule.ports is None else rule.ports[1] - rule.ports[0] + 1
    return (
        int(rule.exe is not None),
        int(rule.container is not None),
        int(rule.runtime is not None),
        int(rule.script is not None),
        int(rule.parent1 is not None),
        int(rule.parent is not None),
        int(rule.user is not None),
        dst_tier,
        dst_sub,
        -span,
        int(rule.proto is not None),
        int(rule.iface is not None),
        int(rule.timed),
        _ACTION_RANK[rule.action],
        rule_id,
    )


def _matches(
    rule: Rule, flow: Flow, proc: Process, names: frozenset[str], now: float, places: Places
) -> bool:
    if rule.until is not None and rule.until <= now:
        return False
    if (rule.during is not None or rule.days is not None) and not rule.active_in(*_local_time(now)):
        return False
    box = proc.container
    if box is None:
        if rule.container is not None or rule.runtime is not None:
            return False
    elif (
        rule.exe is not None
        or (rule.runtime is not None and rule.runtime is not box.runtime)
        or (rule.container is not None and not container_matches(rule.container, box.name))
    ):
        return False
    if rule.exe is not None and (
        rule.exe != proc.exe
        or not proc.verified
        or (rule.sha256 is not None and rule.sha256 != proc.sha256)
        or (rule.script is not None and (rule.script != proc.script or proc.script_doubts))
    ):
        return False
    if rule.parent1 is not None and (not proc.parents or proc.parents[0][1] != rule.parent1):
        return False
    if rule.parent is not None and all(label != rule.parent for _, label in proc.parents):
        return False
    if (
        proc.tampered
        and rule.action is Action.ALLOW
        and (rule.exe is not None or rule.parent is not None or rule.parent1 is not None)
    ):
        return False
    if rule.user is not None and rule.user != proc.owner_uid:
        return False
    if rule.proto is not None and rule.proto is not flow.proto:
        return False
    if rule.ports is not None and (
        flow.proto not in (Proto.TCP, Proto.UDP) or not rule.ports[0] <= flow.dport <= rule.ports[1]
    ):
        return False
    if rule.iface is not None and rule.iface != flow.iface:
        return False
    if rule.dst is not None and flow.dst not in rule.dst:
        return False
    if rule.place is not None and not places.contains(rule.place, flow.dst, names):
        return False
    return rule.host is None or _host_matches(rule.host, names)


def _host_matches(pattern: str, names: frozenset[str]) -> bool:
    if not pattern.startswith("*."):
        return pattern in names
    domain = pattern[2:]
    suffix = "." + domain
    return any(name == domain or name.endswith(suffix) for name in names)


class _Walked:
    """A bucket of a few rules (most apps' own), best first, walked: where an index would cost
    more memory than its rules. Adding one is a binary search in a few entries."""

    __slots__ = ("entries",)

    def __init__(self, entries: list[tuple[int, Rule]]) -> None:
        self.entries = entries  # best first

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, entry: tuple[int, Rule]) -> None:
        insort(self.entries, entry, key=_entry_key)

    def remove(self, entry: tuple[int, Rule]) -> None:
        for i, held in enumerate(self.entries):
            if held is entry:
                del self.entries[i]
                return

    def best(
        self, flow: Flow, proc: Process, names: frozenset[str], now: float, places: Places
    ) -> tuple[int, Rule] | None:
        for entry in self.entries:
            if _matches(entry[1], flow, proc, names, now, places):
                return entry
        return None


class _Indexed:
    """A bucket of many rules, filed so that a lookup reads few of them.

    A rule is filed by its key (`_key`: its precedence rank, negated, so that a smaller key is a
    better rule, with the rule's id in its low bits) under one thing the rule needs in order to
    match: its destination (one dict per prefix length, keyed by the masked address, so an
    address costs one look-up per prefix length in use), else its host or domain, else its single
    port, else the `rest` list. A rule that matches a flow is thus in one of the lists the flow's
    address, names and port select, and as each list is sorted, the first match in a list is that
    list's best. Adding or removing a rule is a binary search in its one list (and a memmove of
    it), never a re-sort of the bucket: the bucket of every app may hold 100k rules.
    """

    __slots__ = ("count", "domains", "hosts", "ids", "nets", "nets4", "nets6", "ports", "rest")

    def __init__(
        self, ids: Mapping[int, tuple[int, Rule]], entries: list[tuple[int, Rule]]
    ) -> None:
        self.ids = ids  # the rule set's own id -> entry map: a key names its rule by id
        self.count = 0
        self.nets: dict[tuple[int, int], dict[int, list[int]]] = {}
        self.nets4: tuple[tuple[int, dict[int, list[int]]], ...] = ()
        self.nets6: tuple[tuple[int, dict[int, list[int]]], ...] = ()
        self.hosts: dict[str, list[int]] = {}
        self.domains: dict[str, list[int]] = {}
        self.ports: dict[int, list[int]] = {}
        self.rest: list[int] = []
        # Best first, so that appending keeps every list sorted.
        for key, rule in sorted((_key(e[1], e[0]), e[1]) for e in entries):
            self._list_for(rule).append(key)
        self.count = len(entries)
        self._order_nets()

    def __len__(self) -> int:
        return self.count

    def _list_for(self, rule: Rule) -> list[int]:
        if rule.dst is not None:
            table = self.nets.setdefault((rule.dst.version, rule.dst.prefixlen), {})
            return table.setdefault(int(rule.dst.network_address), [])
        if rule.host is not None and rule.host.startswith("*."):
            return self.domains.setdefault(rule.host[2:], [])
        if rule.host is not None:
            return self.hosts.setdefault(rule.host, [])
        if rule.ports is not None and rule.ports[0] == rule.ports[1]:
            return self.ports.setdefault(rule.ports[0], [])
        return self.rest

    def _order_nets(self) -> None:
        # Longest prefix first: its rules rank higher, so the later lists are cut short sooner.
        by_length = sorted(self.nets.items(), reverse=True)
        self.nets4 = tuple((_mask(32, n), table) for (v, n), table in by_length if v == 4)
        self.nets6 = tuple((_mask(128, n), table) for (v, n), table in by_length if v == 6)

    def add(self, entry: tuple[int, Rule]) -> None:
        rule = entry[1]
        lengths = len(self.nets)
        insort(self._list_for(rule), _key(rule, entry[0]))
        self.count += 1
        if len(self.nets) != lengths:
            self._order_nets()

    def remove(self, entry: tuple[int, Rule]) -> None:
        rule = entry[1]
        key = _key(rule, entry[0])
        keys = self._list_for(rule)
        i = bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            del keys[i]
            self.count -= 1
        if keys or keys is self.rest:
            return
        # An empty list goes, so that a bucket that shrinks does not keep every key it held.
        if rule.dst is not None:
            length = (rule.dst.version, rule.dst.prefixlen)
            table = self.nets[length]
            del table[int(rule.dst.network_address)]
            if not table:
                del self.nets[length]
                self._order_nets()
        elif rule.host is not None and rule.host.startswith("*."):
            del self.domains[rule.host[2:]]
        elif rule.host is not None:
            del self.hosts[rule.host]
        else:
            assert rule.ports is not None
            del self.ports[rule.ports[0]]

    def entries(self) -> list[tuple[int, Rule]]:
        """Every rule, best first (to turn back into a walked bucket)."""
        keys = [*self.rest]
        for tables in (self.hosts, self.domains, self.ports):
            for filed in tables.values():
                keys += filed
        for table in self.nets.values():
            for filed in table.values():
                keys += filed
        keys.sort()
        return [self.ids[-key & _ID_MASK] for key in keys]

    def best(
        self, flow: Flow, proc: Process, names: frozenset[str], now: float, places: Places
    ) -> tuple[int, Rule] | None:
        """This bucket's best rule that matches, or None."""
        lists: list[list[int]] = []
        nets = self.nets4 if flow.dst.version == 4 else self.nets6
        if nets:
            addr = int(flow.dst)
            for mask, table in nets:
                if (keys := table.get(addr & mask)) is not None:
                    lists.append(keys)
        if self.hosts or self.domains:
            for name in names:
                if (keys := self.hosts.get(name)) is not None:
                    lists.append(keys)
                for domain in _domains_of(name):
                    if (keys := self.domains.get(domain)) is not None:
                        lists.append(keys)
        if (keys := self.ports.get(flow.dport)) is not None:
            lists.append(keys)
        lists.append(self.rest)
        ids = self.ids
        best = 1  # above every key (keys are <= 0)
        hit = None
        for candidates in lists:
            for key in candidates:
                if key >= best:
                    break
                entry = ids[-key & _ID_MASK]
                if _matches(entry[1], flow, proc, names, now, places):
                    best, hit = key, entry
                    break
        return hit


_ID_MASK = (1 << 64) - 1


def _rank(rule: Rule, rule_id: int) -> int:
    """`specificity` packed into one int, larger is better: an index keeps one int per rule
    (a tuple of twelve would cost ~130 bytes more each) and compares ints. The fields keep their
    order; a domain of more than 65535 labels (no real name) would rank as one of 65535."""
    exe, container, runtime, script, parent1, parent, user, tier, sub, span, proto, iface, timed = (
        specificity(rule, rule_id)[:13]
    )
    action = _ACTION_RANK[rule.action]
    if not 0 <= rule_id <= _ID_MASK:
        raise ValueError(f"rule id {rule_id} out of range")
    who = exe << 6 | container << 5 | runtime << 4 | script << 3 | parent1 << 2 | parent << 1
    who |= user
    rank = (who << 2 | tier) << 16 | min(sub, 0xFFFF)
    rank = (((rank << 17 | (65536 + span)) << 1 | proto) << 1 | iface) << 1 | timed
    return (rank << 2 | action) << 64 | rule_id


def _key(rule: Rule, rule_id: int) -> int:
    """The index's sort key: the rank negated, so that sorted lists hold the best rule first."""
    return -_rank(rule, rule_id)


def _entry_key(entry: tuple[int, Rule]) -> int:
    return _key(entry[1], entry[0])


def _mask(width: int, prefix: int) -> int:
    return ((1 << prefix) - 1) << (width - prefix)


def _domains_of(name: str) -> Iterator[str]:
    """Every `d` whose `*.d` matches `name`: the name itself and what follows each of its dots."""
    yield name
    dot = name.find(".")
    while dot >= 0:
        yield name[dot + 1 :]
        dot = name.find(".", dot + 1)


_Bucket = _Walked | _Indexed


def varies(rule: Rule) -> bool:
    """Whether the rule may match one process's flows to one address and port at one moment and
    not at another: it names a host or a domain (the names an address has change with DNS), a
    class or list (their contents change), an interface (routes change), a time window or an
    end. While any such rule is held, no verdict is kept in the kernel (`snitchd.fastpath`)."""
    return (
        rule.host is not None
        or rule.place is not None
        or rule.iface is not None
        or rule.timed
        or rule.until is not None
    )


class RuleSet:
    """An indexed set of rules, updated one rule at a time.

    Built whole at start and when the store changed behind snitchd's back; otherwise `add` and
    `remove` change only the bucket (the rules of one app, or of every app) of the rule they are
    given, in O(log n) comparisons, so a rule change at 100k rules costs µs, not a rebuild. The
    packet loop is single-threaded and each update is done on it between two packets, so a lookup
    never sees half an update.

    It keeps the `(id, rule)` pairs it is given, not entries of its own: at 100k rules, every
    object the index adds per rule costs MBs (a tuple: 6 MB). Buckets of more than
    `index_above` rules are indexed, the others walked; the tests set it to 0 so that small rule
    sets, which fail with readable examples, reach the index too.
    """

    __slots__ = ("_any_app", "_by_exe", "_ids", "_index_above", "places", "varying", "version")

    def __init__(
        self,
        rules: Iterable[tuple[int, Rule]] = (),
        *,
        index_above: int = _INDEX_ABOVE,
        places: Places | None = None,
    ) -> None:
        """`places`: the classes and lists `to=lan`, `to=list:NAME` name (the firewall's
        one `Places`, shared by every set it builds); None holds only the classes."""
        self.places = Places() if places is None else places
        self._index_above = index_above
        self.version = 0  # grows with every add and remove: what caches of this set key on
        self.varying = 0  # rules held whose match varies for one app and destination
        self._ids: dict[int, tuple[int, Rule]] = {}
        for entry in rules:
            if entry[1].lifetime is not Lifetime.ONCE:
                self._ids[entry[0]] = entry
                self.varying += varies(entry[1])
        any_app: list[tuple[int, Rule]] = []
        by_exe: dict[str, list[tuple[int, Rule]]] = {}
        for entry in self._ids.values():
            exe = entry[1].exe
            (any_app if exe is None else by_exe.setdefault(exe, [])).append(entry)
        self._any_app = self._bucket(any_app)
        self._by_exe = {exe: self._bucket(entries) for exe, entries in by_exe.items()}

    def _bucket(self, entries: list[tuple[int, Rule]]) -> _Bucket:
        if len(entries) > self._index_above:
            return _Indexed(self._ids, entries)
        entries.sort(key=_entry_key)
        return _Walked(entries)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, rule_id: int) -> bool:
        return rule_id in self._ids

    def get(self, rule_id: int) -> tuple[int, Rule] | None:
        return self._ids.get(rule_id)

    def snapshot(self) -> dict[int, tuple[int, Rule]]:
        """Every rule by id, copied in one step (a C-level dict copy, which another thread
        cannot interleave with an update)."""
        return self._ids.copy()

    def add(self, entry: tuple[int, Rule]) -> None:
        """Add one rule, or replace the rule of the same id. A for=once rule is never held."""
        rule_id, rule = entry
        self.remove(rule_id)
        self.version += 1
        if rule.lifetime is Lifetime.ONCE:
            return
        self._ids[rule_id] = entry
        self.varying += varies(rule)
        if rule.exe is None:
            bucket = self._any_app
        elif (found := self._by_exe.get(rule.exe)) is not None:
            bucket = found
        else:
            self._by_exe[rule.exe] = self._bucket([entry])
            return
        bucket.add(entry)
        if isinstance(bucket, _Walked) and len(bucket) > self._index_above:
            self._set_bucket(rule.exe, _Indexed(self._ids, bucket.entries))

    def remove(self, rule_id: int) -> tuple[int, Rule] | None:
        """Take out the rule of this id; returns it, or None if there was none."""
        entry = self._ids.get(rule_id)
        if entry is None:
            return None
        exe = entry[1].exe
        bucket = self._any_app if exe is None else self._by_exe[exe]
        bucket.remove(entry)
        del self._ids[rule_id]
        self.varying -= varies(entry[1])
        self.version += 1
        if exe is not None and not len(bucket):
            del self._by_exe[exe]
        elif isinstance(bucket, _Indexed) and len(bucket) <= self._index_above // 2:
            self._set_bucket(exe, _Walked(bucket.entries()))
        return entry

    def _set_bucket(self, exe: str | None, bucket: _Bucket) -> None:
        if exe is None:
            self._any_app = bucket
        else:
            self._by_exe[exe] = bucket

    def match(
        self, flow: Flow, proc: Process, names: frozenset[str], now: float
    ) -> tuple[int, Rule] | None:
        """The winning rule, or None. An app's own rules always beat rules for every app; an
        unverified executable has no own rules."""
        if (
            proc.exe is not None
            and proc.verified
            and proc.container is None
            and (own := self._by_exe.get(proc.exe)) is not None
        ):
            hit = own.best(flow, proc, names, now, self.places)
            if hit is not None:
                return hit
        return self._any_app.best(flow, proc, names, now, self.places)

    def explain(self, flow: Flow, proc: Process, names: frozenset[str], now: float) -> Explanation:
        """All matching rules in precedence order (slow path: for `snitchctl explain`)."""
        places = self.places
        found = [e for e in self._ids.values() if _matches(e[1], flow, proc, names, now, places)]
        found.sort(key=_entry_key)
        return Explanation(tuple(found))


class StricterRules:
    """The rules that block and that a flow of uncertain identity must still meet: `any_app`,
    every deny or reject that names an app or a parent, with those names left out (an owner
    not found in time may be any app); `pins_open`, every deny or reject pinning a digest,
    with the pin left out (a digest not known yet may be the pinned one).

    Kept up to date rule by rule beside the held `RuleSet`, never rebuilt from all rules on
    the packet loop: a rebuild at 100k rules took the loop ~0.1 s, and a user who answers
    their own prompts changes the rules (issue 12)."""

    __slots__ = ("any_app", "pins_open")

    def __init__(
        self, rules: Iterable[tuple[int, Rule]] = (), *, places: Places | None = None
    ) -> None:
        self.any_app = RuleSet(places=places)
        self.pins_open = RuleSet(places=places)
        for rule_id, rule in rules:
            self.add(rule_id, rule)

    def add(self, rule_id: int, rule: Rule) -> None:
        """Follow one rule held (added or replaced)."""
        self.remove(rule_id)
        if rule.action is Action.ALLOW:
            return
        if rule.exe or rule.parent or rule.parent1:
            stripped = dataclasses.replace(
                rule, exe=None, sha256=None, script=None, parent=None, parent1=None
            )
            self.any_app.add((rule_id, stripped))
        if rule.exe is not None and rule.sha256 is not None:
            self.pins_open.add((rule_id, dataclasses.replace(rule, sha256=None)))

    def remove(self, rule_id: int) -> None:
        """Follow one rule released."""
        self.any_app.remove(rule_id)
        self.pins_open.remove(rule_id)


def decide(
    flow: Flow, proc: Process, rules: RuleSet, now: float, names: frozenset[str] = frozenset()
) -> Verdict | Ask:
    """The rule that wins decides; with none, the caller asks an agent or applies the default."""
    hit = rules.match(flow, proc, names, now)
    if hit is None:
        return Ask()
    rule_id, rule = hit
    return Verdict(rule.action, rule_id, f"rule {rule_id}")
