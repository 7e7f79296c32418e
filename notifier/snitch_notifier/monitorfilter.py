"""The Network Monitor's one filter box: what a person types, and which apps and destinations
it keeps. No Qt, no I/O.

Words match anything shown: an app's path or its user, a destination's name or address, a
port, a verdict. `key:value` narrows a word to one field: `app:`, `user:`, `host:` (a name or
an address; `*.example.org` is read as `example.org`), `port:` (`443` or `443/tcp`),
`verdict:` (`allow`, `deny`, `reject`, or `blocked` for either of the last two). Every word
must match: an app passes when its own name or user matches the words that name it and one of
its destinations matches all the rest (`host:example.org verdict:deny` keeps an app denied on
example.org, not one that went there and was denied elsewhere).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from snitch_notifier.traffic import AppKey, AppTraffic, HostTraffic, user_name

__all__ = ["Field", "MonitorFilter", "Term", "parse_filter"]


class Field(enum.Enum):
    """What a word is matched against; ANY is a word without a key."""

    ANY = ""
    APP = "app"
    USER = "user"
    HOST = "host"
    PORT = "port"
    VERDICT = "verdict"


# The verdicts a `verdict:` word (or a bare word) stands for.
_VERDICTS = {
    "allow": frozenset({"allow"}),
    "allowed": frozenset({"allow"}),
    "deny": frozenset({"deny"}),
    "denied": frozenset({"deny"}),
    "reject": frozenset({"reject"}),
    "rejected": frozenset({"reject"}),
    "block": frozenset({"deny", "reject"}),
    "blocked": frozenset({"deny", "reject"}),
}
_APP_FIELDS = (Field.APP, Field.USER)


@dataclass(frozen=True, slots=True)
class Term:
    field: Field
    value: str  # lower case


@dataclass(frozen=True, slots=True)
class MonitorFilter:
    """The parsed box; an empty one keeps everything."""

    terms: tuple[Term, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.terms

    @property
    def needs_hosts(self) -> bool:
        """Whether an app's destinations may decide whether it is kept (then the window reads
        where every app went, not only the selected one)."""
        return any(t.field not in _APP_FIELDS for t in self.terms)

    def keeps_app(self, app: AppTraffic, hosts: Sequence[HostTraffic] | None) -> bool:
        """`hosts`: the app's destinations, None when they are not known (not read yet, or
        not among the rows read); then only its name, user and totals can match."""
        rest = self._left_by(app.key)
        if rest is None:
            return False
        if not rest:
            return True
        if hosts is None:
            return _totals_match(app, rest)
        return any(all(_host_matches(t, h) for t in rest) for h in hosts)

    def keeps_host(self, key: AppKey, host: HostTraffic) -> bool:
        """Whether a destination of the app `key` is shown: the words its app does not match
        must match it."""
        rest = self._left_by(key)
        return rest is not None and all(_host_matches(t, host) for t in rest)

    def _left_by(self, key: AppKey) -> list[Term] | None:
        """The terms the app itself does not satisfy, or None when one that only an app can
        satisfy (`app:`, `user:`) fails."""
        rest = []
        for term in self.terms:
            if _app_matches(term, key):
                continue
            if term.field in _APP_FIELDS:
                return None
            rest.append(term)
        return rest


def parse_filter(text: str) -> MonitorFilter:
    """The box's text as terms; an unknown `key:` is a plain word (a host may hold a colon:
    an IPv6 address)."""
    terms = []
    keys = {f.value for f in Field if f is not Field.ANY}
    for typed in text.lower().split():
        field, value = Field.ANY, typed
        key, sep, rest = typed.partition(":")
        if sep and rest and key in keys:
            field, value = Field(key), rest
        if field is Field.HOST and value.startswith("*."):
            value = value[2:]
        terms.append(Term(field, value))
    return MonitorFilter(tuple(terms))


def _app_matches(term: Term, key: AppKey) -> bool:
    if term.field in (Field.ANY, Field.APP) and term.value in key.app.lower():
        return True
    if term.field in (Field.ANY, Field.USER):
        return term.value in user_name(key.uid).lower() or term.value == str(key.uid)
    return False


def _host_matches(term: Term, host: HostTraffic) -> bool:
    word, field = term.value, term.field
    if field in (Field.ANY, Field.HOST) and (
        word in host.host.lower() or word in host.address.lower()
    ):
        return True
    if field in (Field.ANY, Field.PORT) and host.port is not None:
        number, _, proto = word.partition("/")
        if number == str(host.port) and proto in ("", host.proto):
            return True
    if field in (Field.ANY, Field.VERDICT):
        return bool(_VERDICTS.get(word, frozenset()) & _actions(host))
    return False


def _actions(host: HostTraffic) -> frozenset[str]:
    if host.actions:
        return host.actions
    shown = {host.last_action}
    if host.blocked:
        shown.add("deny")
    if host.connections > host.blocked:
        shown.add("allow")
    return frozenset(shown)


def _totals_match(app: AppTraffic, terms: list[Term]) -> bool:
    """Without its destinations, an app matches verdict words by its totals (blocked or not:
    deny and reject look alike there); nothing else about where it went is known."""
    for term in terms:
        wanted = _VERDICTS.get(term.value)
        if term.field not in (Field.ANY, Field.VERDICT) or wanted is None:
            return False
        if "allow" in wanted and app.connections > app.blocked:
            continue
        if wanted & {"deny", "reject"} and app.blocked:
            continue
        return False
    return True
