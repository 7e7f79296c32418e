"""The decision core: which rule covers a flow, and what to do with it.

Pure: no I/O, no clock, no root; the time comes in as `now`. A test checks that this module
imports nothing that could do I/O.

Precedence, in one sentence (README and docs/rules.md say the same): **the most specific rule
wins — one naming the app beats one that does not, then one naming the user, then the narrowest
destination (an address or host beats a domain, a domain beats a network, a longer prefix beats a
shorter one), then the narrowest port range, then naming a protocol, then an interface — and on a
full tie reject beats deny beats allow.** Between otherwise equal rules the newest wins, so the
order is total and `explain` can always name one winner.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from snitch_common.records import Flow, Process, Proto
from snitch_common.rules import Action, Lifetime, Rule

__all__ = ["PRECEDENCE", "Ask", "Explanation", "RuleSet", "Verdict", "decide", "specificity"]

PRECEDENCE = (
    "the most specific rule wins: naming the app beats not naming it, then naming the user, "
    "then the narrowest destination (address or host > domain > network, longer prefix first), "
    "then the narrowest port range, then naming a protocol, then an interface; "
    "on a full tie reject beats deny beats allow, and then the newest rule"
)

_ACTION_RANK = {Action.ALLOW: 0, Action.DENY: 1, Action.REJECT: 2}
_Key = tuple[int, ...]
# Buckets of up to this many rules are walked, not indexed. Measured on bench/manyrules.py (10k
# apps of 10 rules): indexing them too cost 28 MB, for 3.4 -> 1.2 µs when none of 10 matches.
_INDEX_ABOVE = 16
_NO_NAMES: Mapping[str, list[int]] = {}
_NO_PORTS: Mapping[int, list[int]] = {}


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
        dst_tier, dst_sub = (3, 0) if prefix == 128 else (1, prefix)
    else:
        dst_tier, dst_sub = 0, 0
    span = 65536 if rule.ports is None else rule.ports[1] - rule.ports[0] + 1
    return (
        int(rule.exe is not None),
        int(rule.user is not None),
        dst_tier,
        dst_sub,
        -span,
        int(rule.proto is not None),
        int(rule.iface is not None),
        _ACTION_RANK[rule.action],
        rule_id,
    )


def _matches(rule: Rule, flow: Flow, proc: Process, names: frozenset[str], now: float) -> bool:
    if rule.until is not None and rule.until <= now:
        return False
    if rule.exe is not None and (
        rule.exe != proc.exe or (rule.sha256 is not None and rule.sha256 != proc.sha256)
    ):
        return False
    if rule.user is not None and rule.user != proc.uid:
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
    return rule.host is None or _host_matches(rule.host, names)


def _host_matches(pattern: str, names: frozenset[str]) -> bool:
    if not pattern.startswith("*."):
        return pattern in names
    domain = pattern[2:]
    suffix = "." + domain
    return any(name == domain or name.endswith(suffix) for name in names)


class _Bucket:
    """Rules of one app (or of every app), best first, filed so that a lookup reads few of them.

    A rule is known by its rank, its place in `entries`: a smaller rank is a better rule. Each
    rank is filed under one thing the rule needs in order to match: its destination (one dict per
    prefix length, keyed by the masked address, so an address costs one look-up per prefix length
    in use), else its host or domain, else its single port, else the `rest` list. A rule that
    matches a flow is thus in one of the lists the flow's address, names and port select, and as
    each list is in rank order, the first match in a list is that list's best.

    A bucket of a few rules (most apps' own) is not indexed: all its ranks are `rest`, walked
    in a few µs, where its dicts would cost more memory than its rules.
    """

    __slots__ = ("domains", "entries", "hosts", "nets4", "nets6", "ports", "rest")

    def __init__(self, entries: list[tuple[int, Rule]], index_above: int) -> None:
        entries.sort(key=lambda e: specificity(e[1], e[0]), reverse=True)
        self.entries = entries
        self.nets4: tuple[tuple[int, dict[int, list[int]]], ...] = ()
        self.nets6: tuple[tuple[int, dict[int, list[int]]], ...] = ()
        self.hosts: Mapping[str, list[int]] = _NO_NAMES
        self.domains: Mapping[str, list[int]] = _NO_NAMES
        self.ports: Mapping[int, list[int]] = _NO_PORTS
        self.rest: Sequence[int] = range(len(entries))
        if len(entries) > index_above:
            self._file()

    def _file(self) -> None:
        nets: dict[tuple[int, int], dict[int, list[int]]] = {}
        hosts: dict[str, list[int]] = {}
        domains: dict[str, list[int]] = {}
        ports: dict[int, list[int]] = {}
        rest: list[int] = []
        for rank, (_, rule) in enumerate(self.entries):
            if rule.dst is not None:
                table = nets.setdefault((rule.dst.version, rule.dst.prefixlen), {})
                table.setdefault(int(rule.dst.network_address), []).append(rank)
            elif rule.host is not None and rule.host.startswith("*."):
                domains.setdefault(rule.host[2:], []).append(rank)
            elif rule.host is not None:
                hosts.setdefault(rule.host, []).append(rank)
            elif rule.ports is not None and rule.ports[0] == rule.ports[1]:
                ports.setdefault(rule.ports[0], []).append(rank)
            else:
                rest.append(rank)
        # Longest prefix first: its rules rank higher, so the later lists are cut short sooner.
        by_length = sorted(nets.items(), reverse=True)
        self.nets4 = tuple((_mask(32, n), table) for (v, n), table in by_length if v == 4)
        self.nets6 = tuple((_mask(128, n), table) for (v, n), table in by_length if v == 6)
        self.hosts, self.domains, self.ports, self.rest = hosts, domains, ports, rest

    def best(
        self, flow: Flow, proc: Process, names: frozenset[str], now: float
    ) -> tuple[int, Rule] | None:
        """This bucket's best rule that matches, or None."""
        lists: list[Sequence[int]] = []
        nets = self.nets4 if flow.dst.version == 4 else self.nets6
        if nets:
            addr = int(flow.dst)
            for mask, table in nets:
                if (ranks := table.get(addr & mask)) is not None:
                    lists.append(ranks)
        if self.hosts or self.domains:
            for name in names:
                if (ranks := self.hosts.get(name)) is not None:
                    lists.append(ranks)
                for domain in _domains_of(name):
                    if (ranks := self.domains.get(domain)) is not None:
                        lists.append(ranks)
        if (ranks := self.ports.get(flow.dport)) is not None:
            lists.append(ranks)
        lists.append(self.rest)
        entries = self.entries
        best = len(entries)
        for candidates in lists:
            for rank in candidates:
                if rank >= best:
                    break
                if _matches(entries[rank][1], flow, proc, names, now):
                    best = rank
                    break
        return entries[best] if best < len(entries) else None


def _mask(width: int, prefix: int) -> int:
    return ((1 << prefix) - 1) << (width - prefix)


def _domains_of(name: str) -> Iterator[str]:
    """Every `d` whose `*.d` matches `name`: the name itself and what follows each of its dots."""
    yield name
    dot = name.find(".")
    while dot >= 0:
        yield name[dot + 1 :]
        dot = name.find(".", dot + 1)


class RuleSet:
    """An immutable, indexed set of rules, rebuilt whole when rules change (rare) so that a
    lookup (per new flow) never takes a lock or sees half an update.

    It keeps the `(id, rule)` pairs it is given, not entries of its own: at 100k rules, every
    object the index adds per rule costs MBs (a tuple: 6 MB). Buckets (the rules of one app, or
    of every app) of more than `index_above` rules are indexed, the others walked; the tests set
    it to 0 so that small rule sets, which fail with readable examples, reach the index too.
    """

    def __init__(
        self, rules: Iterable[tuple[int, Rule]] = (), *, index_above: int = _INDEX_ABOVE
    ) -> None:
        any_app: list[tuple[int, Rule]] = []
        by_exe: dict[str, list[tuple[int, Rule]]] = {}
        for entry in rules:
            rule = entry[1]
            if rule.lifetime is Lifetime.ONCE:
                continue
            (any_app if rule.exe is None else by_exe.setdefault(rule.exe, [])).append(entry)
        self._count = len(any_app) + sum(len(e) for e in by_exe.values())
        self._any_app = _Bucket(any_app, index_above)
        self._by_exe = {exe: _Bucket(entries, index_above) for exe, entries in by_exe.items()}

    def __len__(self) -> int:
        return self._count

    def match(
        self, flow: Flow, proc: Process, names: frozenset[str], now: float
    ) -> tuple[int, Rule] | None:
        """The winning rule, or None. An app's own rules always beat rules for every app."""
        if proc.exe is not None and (own := self._by_exe.get(proc.exe)) is not None:
            hit = own.best(flow, proc, names, now)
            if hit is not None:
                return hit
        return self._any_app.best(flow, proc, names, now)

    def explain(self, flow: Flow, proc: Process, names: frozenset[str], now: float) -> Explanation:
        """All matching rules in precedence order (slow path: for `snitchctl explain`)."""
        found = [
            entry
            for bucket in (*self._by_exe.values(), self._any_app)
            for entry in bucket.entries
            if _matches(entry[1], flow, proc, names, now)
        ]
        found.sort(key=lambda e: specificity(e[1], e[0]), reverse=True)
        return Explanation(tuple(found))


def decide(
    flow: Flow, proc: Process, rules: RuleSet, now: float, names: frozenset[str] = frozenset()
) -> Verdict | Ask:
    """The rule that wins decides; with none, the caller asks an agent or applies the default."""
    hit = rules.match(flow, proc, names, now)
    if hit is None:
        return Ask()
    rule_id, rule = hit
    return Verdict(rule.action, rule_id, f"rule {rule_id}")
