"""What the Network Monitor can do about a destination it shows: make a rule for it "from now
on", ask snitchd why it gets its verdict, and list the rules that apply to an app. No Qt.

A rule made here is the rule the popup would make for the same answer: the scopes are the
popup's (`choices.scope_options`), the rule is `answers.rule_for_answer`'s, built from the
destination as the log recorded it (the app's path and user, the address, the name snitch
learnt, the port). The log does not keep what a prompt knows of a live process (its script,
its parents, a container), so those scopes are greyed here, with that reason. The executable
is pinned to the sha256 of the file at its path now, as snitchd pins answers by default
(`pin_answers`), when the person running the monitor can read it; else the rule names the path
alone, and the window says so before it is made.

snitchd decides who may add a rule (`AddRuleWithNote`: root or its admin group): the monitor
asks and shows the answer, as the rules window does.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, replace
from ipaddress import ip_address

from dbus_fast import Variant

from snitch_common.answers import DURATIONS, Action, Answer, Scope, rule_for_answer
from snitch_common.bus import PromptView
from snitch_common.choices import ScopeOption, scope_options
from snitch_common.errors import RuleError
from snitch_common.records import Attribution, Flow, Process, Proto
from snitch_common.rules import Rule, parse_rule
from snitch_notifier.bridge import RuleRow
from snitch_notifier.traffic import AppKey, HostTraffic

__all__ = [
    "LASTING_DURATIONS",
    "MAX_HASH_BYTES",
    "RuleChoice",
    "applying_rules",
    "can_act",
    "digest_of",
    "explain_query",
    "monitor_scopes",
    "rule_of",
]

# "from now on": a once answer has no prompt to settle, and "until the app quits" no process.
LASTING_DURATIONS = tuple((v, text) for v, text in DURATIONS if v not in ("once", "process"))
MAX_HASH_BYTES = 512 * 1024 * 1024  # larger executables are named by path alone
_NOT_LOGGED = {
    Scope.SCRIPT: "the connection log does not record the script an app ran",
    Scope.PARENT: "the connection log does not record an app's parents",
    Scope.CONTAINER: "the connection log does not record containers",
}


@dataclass(frozen=True, slots=True)
class RuleChoice:
    """What a person chose in the monitor's rule dialog."""

    app: AppKey
    host: HostTraffic
    action: Action
    scope: Scope
    duration: str = "forever"
    only_user: bool = False  # the rule names the app's user (`user=`), else every user


def can_act(app: AppKey, host: HostTraffic) -> str | None:
    """Why no rule can be made for this destination here, or None when one can: a rule for an
    app needs its executable (a `kernel` or `uid N` row has none), and an address."""
    if not app.app.startswith("/"):
        return f"{app.app} has no executable to name: write the rule with snitchctl add-rule"
    try:
        ip_address(host.address)
    except ValueError:
        return f"{host.address or 'this destination'} is not an address"
    return None


def _view(app: AppKey, host: HostTraffic) -> PromptView:
    """The destination as the popup would have been shown it, as far as the log knows."""
    named = host.host != host.address
    return PromptView(
        id=0,
        exe=app.app,
        pid=None,
        uid=None if app.uid < 0 else app.uid,
        user=None,
        cmdline=(),
        parents=(),
        sha256=None,
        proto=host.proto,
        dst=host.address,
        port=host.port or 0,
        iface="",
        host=host.host if named else None,
        deadline=0.0,
        default_action="deny",
        rule_host=host.host if named else None,
    )


def monitor_scopes(app: AppKey, host: HostTraffic) -> list[ScopeOption]:
    """The popup's scope list for this destination, with what the log cannot tell greyed."""
    name = os.path.basename(app.app) or app.app
    return [
        replace(o, why_not=_NOT_LOGGED[o.scope]) if o.scope in _NOT_LOGGED else o
        for o in scope_options(_view(app, host), name)
    ]


def rule_of(choice: RuleChoice, sha256: str | None) -> Rule:
    """The rule the choice means (`rule_for_answer`, the popup's); RuleError / PromptError
    (a SnitchError) with the reason when the scope cannot apply."""
    refused = can_act(choice.app, choice.host)
    if refused is not None:
        raise RuleError(f"cannot make a rule: {refused}")
    host = choice.host
    try:
        proto = Proto(host.proto)
    except ValueError:
        proto = Proto.OTHER
    address = ip_address(host.address)
    src = ip_address("0.0.0.0") if address.version == 4 else ip_address("::")
    flow = Flow(proto, src, 0, address, host.port or 0)
    uid = None if choice.app.uid < 0 else choice.app.uid
    proc = Process(Attribution.PROCESS, uid=uid, exe=choice.app.app, sha256=sha256)
    named = host.host if host.host != host.address else None
    answer = Answer(0, choice.action, choice.duration, choice.scope)
    admin = not choice.only_user or uid is None
    return rule_for_answer(flow, proc, named, answer, admin=admin)


def digest_of(path: str, max_bytes: int = MAX_HASH_BYTES) -> str | None:
    """The sha256 of the executable at `path` now, or None when it cannot be read here (not a
    regular file, not readable by this user, larger than `max_bytes`)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            return None
        return hashlib.file_digest(f, "sha256").hexdigest()


def explain_query(app: AppKey, host: HostTraffic) -> dict[str, Variant]:
    """`Explain`'s question for this destination, as `snitchctl explain` asks it: the address,
    port and protocol, the app and its user, and the name the log shows (as if the app had
    resolved it: the packet path labels its flows with the names it resolved)."""
    query = {
        "dst": Variant("s", host.address),
        "port": Variant("x", host.port or 0),
        "proto": Variant("s", host.proto or "tcp"),
    }
    if app.app.startswith("/"):
        query["exe"] = Variant("s", app.app)
    if app.uid >= 0:
        query["uid"] = Variant("x", app.uid)
    if host.host != host.address:
        query["host"] = Variant("s", host.host)
    return query


def applying_rules(rows: Iterable[RuleRow], app: AppKey) -> list[RuleRow]:
    """The rules that can apply to `app`: those naming its executable or no app, for its user
    or any; not those of containers (their flows are named by their container). A rule whose
    text does not parse here (a newer snitchd) is left out."""
    kept = []
    for row in rows:
        try:
            rule = parse_rule(row.text)
        except RuleError:
            continue
        if rule.container is not None or rule.runtime is not None:
            continue
        if rule.exe is not None and rule.exe != app.app:
            continue
        if rule.user is not None and rule.user != app.uid:
            continue
        kept.append(row)
    return kept
