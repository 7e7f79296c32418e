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

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from snitchd.records import Flow, Process, Proto
from snitchd.rules import Action, Lifetime, Rule

__all__ = ["PRECEDENCE", "Ask", "Explanation", "RuleSet", "Verdict", "decide", "specificity"]

PRECEDENCE = (
    "the most specific rule wins: naming the app beats not naming it, then naming the user, "
    "then the narrowest destination (address or host > domain > network, longer prefix first), "
    "then the narrowest port range, then naming a protocol, then an interface; "
    "on a full tie reject beats deny beats allow, and then the newest rule"
)

_ACTION_RANK = {Action.ALLOW: 0, Action.DENY: 1, Action.REJECT: 2}
_Key = tuple[int, ...]


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
    """Rules of one app (or of every app), split so that a lookup reads few of them.

    Rules for one address go under that address, rules for one port under that port, the rest
    in one list; each list is sorted best first, so the first match of each list is its best and
    the winner is the best of those (at most three) candidates.
    """

    __slots__ = ("by_addr", "by_port", "rest")

    def __init__(self) -> None:
        self.by_addr: dict[object, list[tuple[_Key, int, Rule]]] = {}
        self.by_port: dict[int, list[tuple[_Key, int, Rule]]] = {}
        self.rest: list[tuple[_Key, int, Rule]] = []

    def add(self, key: _Key, rule_id: int, rule: Rule) -> None:
        entry = (key, rule_id, rule)
        if rule.dst is not None and rule.dst.prefixlen == rule.dst.max_prefixlen:
            self.by_addr.setdefault(rule.dst.network_address, []).append(entry)
        elif rule.ports is not None and rule.ports[0] == rule.ports[1]:
            self.by_port.setdefault(rule.ports[0], []).append(entry)
        else:
            self.rest.append(entry)

    def lists(self) -> Iterator[list[tuple[_Key, int, Rule]]]:
        yield from self.by_addr.values()
        yield from self.by_port.values()
        yield self.rest

    def candidates(self, flow: Flow) -> tuple[list[tuple[_Key, int, Rule]], ...]:
        return (self.by_addr.get(flow.dst, []), self.by_port.get(flow.dport, []), self.rest)


class RuleSet:
    """An immutable, indexed set of rules, rebuilt whole when rules change (rare) so that a
    lookup (per new flow) never takes a lock or sees half an update."""

    def __init__(self, rules: Iterable[tuple[int, Rule]] = ()) -> None:
        self._by_exe: dict[str, _Bucket] = {}
        self._any_app = _Bucket()
        self._count = 0
        for rule_id, rule in rules:
            if rule.lifetime is Lifetime.ONCE:
                continue
            bucket = (
                self._any_app if rule.exe is None else self._by_exe.setdefault(rule.exe, _Bucket())
            )
            bucket.add(specificity(rule, rule_id), rule_id, rule)
            self._count += 1
        for b in (*self._by_exe.values(), self._any_app):
            for entries in b.lists():
                entries.sort(key=lambda e: e[0], reverse=True)

    def __len__(self) -> int:
        return self._count

    def match(
        self, flow: Flow, proc: Process, names: frozenset[str], now: float
    ) -> tuple[int, Rule] | None:
        """The winning rule, or None. An app's own rules always beat rules for every app."""
        buckets = [self._any_app]
        if proc.exe is not None and (own := self._by_exe.get(proc.exe)) is not None:
            buckets.insert(0, own)
        for bucket in buckets:
            best: tuple[_Key, int, Rule] | None = None
            for entries in bucket.candidates(flow):
                for entry in entries:
                    if best is not None and entry[0] <= best[0]:
                        break
                    if _matches(entry[2], flow, proc, names, now):
                        best = entry
                        break
            if best is not None:
                return best[1], best[2]
        return None

    def explain(self, flow: Flow, proc: Process, names: frozenset[str], now: float) -> Explanation:
        """All matching rules in precedence order (slow path: for `snitchctl explain`)."""
        found: list[tuple[_Key, int, Rule]] = []
        for bucket in (*self._by_exe.values(), self._any_app):
            for entries in bucket.lists():
                found.extend(e for e in entries if _matches(e[2], flow, proc, names, now))
        found.sort(key=lambda e: e[0], reverse=True)
        return Explanation(tuple((e[1], e[2]) for e in found))


def decide(
    flow: Flow, proc: Process, rules: RuleSet, now: float, names: frozenset[str] = frozenset()
) -> Verdict | Ask:
    """The rule that wins decides; with none, the caller asks an agent or applies the default."""
    hit = rules.match(flow, proc, names, now)
    if hit is None:
        return Ask()
    rule_id, rule = hit
    return Verdict(rule.action, rule_id, f"rule {rule_id}")
