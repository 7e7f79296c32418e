"""The one answer vocabulary: what a person can say to a prompt, and the rule each answer means.

The popup, the terminal agent and the daemon all speak these words (`allow`, `15m`, `host` …):
the agents offer them, `AnswerPrompt` carries them, and snitchd turns them into a rule with
`rule_for_answer`. Living here once, they cannot drift apart. Which scopes make sense depends on
the prompt (a domain needs a host name, a port needs TCP or UDP); `rule_for_answer` refuses the
others with the reason, and the popup greys them out with the same reason. While a profile is
active (issue 17) an answer also says where its rule holds (`Reach`): in every profile, or only
in the profile that was active when the prompt was asked (`profile=NAME`). No I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from ipaddress import ip_network

from snitch_common.errors import ProfileError, PromptError, RuleError, SnitchError, StoreError
from snitch_common.records import Flow, Process, Proto
from snitch_common.rules import Action, Lifetime, Rule, parse_duration

__all__ = [
    "ACTION_WORDS",
    "APP_SCOPES",
    "DEFAULT_DURATION",
    "DEFAULT_SCOPE",
    "DURATIONS",
    "NETWORK_PREFIX",
    "NO_APP",
    "REACHES",
    "Action",
    "Answer",
    "Reach",
    "Scope",
    "default_duration",
    "domain_of",
    "left_open",
    "parse_answer",
    "rule_for_answer",
]


class Scope(enum.Enum):
    """What an answer covers, from the app's point of view."""

    EXACT = "exact"  # this destination, this port and protocol
    HOST = "host"  # this destination, any port
    DOMAIN = "domain"  # any host of this domain (needs a name)
    PORT = "port"  # any destination on this port and protocol
    APP = "app"  # anything this app does (an interpreter: whatever script it runs)
    SCRIPT = "script"  # anything this script does (needs a script)
    PARENT = "parent"  # anything this app does when started by its direct parent
    ANY_APP = "anyapp"  # any app (of this user) to this destination, port and protocol
    NETWORK = "network"  # this app to this network (/24 for IPv4, /64 for IPv6), any port
    CONTAINER = "container"  # anything this container does (needs a container's flow)


class Reach(enum.Enum):
    """Where an answer's rule holds while a profile is active (issue 17)."""

    EVERYWHERE = "everywhere"  # in every profile (a rule without profile=)
    PROFILE = "profile"  # only in the profile active when asked (profile=NAME)


# The reaches agents offer, with the label the popup shows after "in": the profile's name
# fills `{}`. Everywhere comes first: it is the default, as before profiles existed.
REACHES: tuple[tuple[Reach, str], ...] = (
    (Reach.EVERYWHERE, "every profile"),
    (Reach.PROFILE, "profile {} only"),
)


# The durations agents offer, with the label the popup shows; any `Nm` is accepted too.
DURATIONS: tuple[tuple[str, str], ...] = (
    ("once", "once"),
    ("process", "until the app quits"),
    ("5m", "for 5 minutes"),
    ("15m", "for 15 minutes"),
    ("60m", "for 1 hour"),
    ("restart", "until restart"),
    ("forever", "forever"),
)
DEFAULT_DURATION = "forever"
# The network a `network` answer covers, by IP version: a /24 (a typical IPv4 subnet, or one
# provider's block of servers), a /64 (one IPv6 subnet).
NETWORK_PREFIX = {4: 24, 6: 64}
DEFAULT_SCOPE = Scope.EXACT
# The scopes that widen from the app's own point of view (a port, a host, a network, all it
# does): refused for a connection of no known app (the kernel's, a sender not found), whose
# rule would name no app and so hold for every app. Its destination-only answers remain.
APP_SCOPES = frozenset(Scope) - {Scope.EXACT, Scope.ANY_APP, Scope.CONTAINER}
NO_APP = "no app is known for this connection: its rule would hold for every app"
# What a person may type for an action: the word or its first letter.
ACTION_WORDS: dict[str, Action] = {
    **{a.value: a for a in Action},
    **{a.value[0]: a for a in Action},
}


@dataclass(frozen=True, slots=True)
class Answer:
    """One person's answer to one prompt, in the words that travel over D-Bus."""

    prompt_id: int
    action: Action
    duration: str = DEFAULT_DURATION
    scope: Scope = DEFAULT_SCOPE
    reach: Reach = Reach.EVERYWHERE

    @property
    def lifetime(self) -> tuple[Lifetime, int | None]:
        """(lifetime, minutes) of the rule this answer makes."""
        return parse_duration(self.duration)


def parse_answer(
    prompt_id: int, action: str, duration: str, scope: str, reach: str = "everywhere"
) -> Answer:
    """Check the words of an answer; `PromptError` names the one that is wrong."""
    try:
        act = Action(action)
    except ValueError:
        raise PromptError(f"invalid answer action {action!r}: use allow, deny or reject") from None
    try:
        parse_duration(duration)
    except Exception as exc:
        raise PromptError(str(exc)) from None
    try:
        sc = Scope(scope)
    except ValueError:
        choices = ", ".join(s.value for s in Scope)
        raise PromptError(f"invalid answer scope {scope!r}: use {choices}") from None
    try:
        where = Reach(reach)
    except ValueError:
        choices = " or ".join(r.value for r in Reach)
        raise PromptError(f"invalid answer reach {reach!r}: use {choices}") from None
    return Answer(prompt_id, act, duration, sc, where)


def left_open(refusal: SnitchError) -> bool:
    """Whether snitchd still holds a prompt whose answer it refused: it did when it refused
    the answer's words (PromptError, and so when polkit said no to it), could not make its
    rule (RuleError, StoreError: a locked store), or its profile was deleted since
    (ProfileError); the person can answer again and the agent shows the prompt again. Any
    other refusal (NotAuthorized: answered already, timed out, not this agent's) ended it."""
    return isinstance(refusal, (PromptError, RuleError, StoreError, ProfileError))


def default_duration(verified: bool, tampered: bool) -> str:
    """The duration an agent preselects: `once` for an unverified executable or one running
    injected code, for which `rule_for_answer` makes no lasting rule (or no allow rule)."""
    return DEFAULT_DURATION if verified and not tampered else "once"


def domain_of(host: str) -> str:
    """The domain a `domain` answer covers: `a.example.org` → `*.example.org`."""
    return "*." + (host.split(".", 1)[1] if host.count(".") > 1 else host)


def rule_for_answer(
    flow: Flow,
    proc: Process,
    host: str | None,
    answer: Answer,
    *,
    admin: bool,
    pin_root: bool = True,
    profile: str | None = None,
) -> Rule:
    """The rule an answer means (`_covered`), held in every profile or, for `Reach.PROFILE`,
    only in `profile`: the one active when the prompt was asked (issue 17), which its person
    saw. Without an active profile `Reach.PROFILE` is refused: a rule of no profile holds in
    every one, more than was asked."""
    if proc.exe is None and proc.container is None and answer.scope in APP_SCOPES:
        # Its rule could name no app, so it would hold for every app: "anything this app
        # connects to" for the kernel's IGMP report would have been a bare `allow`.
        raise PromptError(
            f"scope {answer.scope.value!r} is about this connection's app, and no app is known "
            f"for it ({proc.describe()}): its rule would hold for every app; answer for this "
            "destination only, or once"
        )
    rule = _covered(flow, proc, host, answer, admin=admin, pin_root=pin_root)
    if answer.reach is Reach.EVERYWHERE:
        return rule
    if profile is None:
        raise PromptError(
            "'in this profile only' needs a profile, and none was active when this prompt "
            "was asked: answer for every profile"
        )
    return replace(rule, profile=profile)


def _covered(
    flow: Flow,
    proc: Process,
    host: str | None,
    answer: Answer,
    *,
    admin: bool,
    pin_root: bool = True,
) -> Rule:
    """What an answer's rule covers, whatever the profile. A rule made by a non-admin is
    limited to that user's own processes, so one user's answer can never open or close anything
    for another.

    Who it names is who asked, as far as it could be checked (issue 14): the executable pinned
    to its sha256 when someone other than root can change it, and when `pin_root` (config
    `pin_answers = "always"`, the default) root-owned ones too; an interpreter's script, except
    for `app` (whatever it runs); the direct parent for `parent`. An unverified executable only
    gets a once answer (a rule would name another file's path), and so does an allow for a
    process running injected code (its app's rule would not match it); `anyapp` names no app
    (every app of the user, of everyone for an admin), so it is open to them too.

    `host` is the name the answer may name: one this very process resolved the address from
    (issue 15); None makes `exact`, `host` and `anyapp` name the address, and `domain` refused.
    `network` covers the address's /24 (IPv4) or /64 (IPv6), any port. A container's flow
    (issue 16) makes a rule naming the container, whatever the scope."""
    if proc.container is not None or answer.scope is Scope.CONTAINER:
        return _container_rule(flow, proc, host, answer, admin=admin)
    if answer.scope is not Scope.ANY_APP:
        _check_identity(proc, answer)
    ported = flow.proto in (Proto.TCP, Proto.UDP)
    proto: Proto | None = flow.proto  # `other` too: an answer for GRE or IGMP lets no TCP out
    dst = None
    rule_host = None
    ports = None
    if answer.scope is Scope.DOMAIN:
        if host is None or "." not in host:
            raise PromptError(
                "scope 'domain' needs a host name this app itself resolved, and this "
                "destination has none"
            )
        rule_host = domain_of(host)
    if answer.scope in (Scope.EXACT, Scope.HOST, Scope.ANY_APP):
        if host is not None:
            rule_host = host
        else:
            dst = ip_network(flow.dst)
    if answer.scope is Scope.NETWORK:
        dst = ip_network(f"{flow.dst}/{NETWORK_PREFIX[flow.dst.version]}", strict=False)
    if answer.scope in (Scope.EXACT, Scope.PORT, Scope.ANY_APP) and ported:
        ports = (flow.dport, flow.dport)
    if answer.scope in (
        Scope.HOST, Scope.DOMAIN, Scope.APP, Scope.SCRIPT, Scope.PARENT, Scope.NETWORK
    ):  # fmt: skip
        proto = None
    anyone = answer.scope is Scope.ANY_APP
    script = (
        proc.script
        if answer.scope not in (Scope.APP, Scope.ANY_APP) and not proc.script_doubts
        else None
    )
    if answer.scope is Scope.SCRIPT and script is None:
        raise PromptError(f"scope 'script' needs a script: {_no_script(proc)}")
    parent1 = None
    if answer.scope is Scope.PARENT:
        parent1 = proc.parents[0][1] if proc.parents else None
        if parent1 is None or not parent1.startswith("/"):
            raise PromptError("scope 'parent' needs a parent whose executable was verified")
    if answer.scope is Scope.PORT and not ported:
        raise PromptError(f"scope 'port' needs TCP or UDP, not {flow.proto.value}")
    lifetime, minutes = answer.lifetime
    per_process = lifetime is Lifetime.PROCESS
    if per_process and (anyone or proc.exe is None):
        # Its rule ends with the app's process, so it must name the app (`for=process` needs
        # `app=`): one without would be stored, and then refused by the store's own parser.
        raise PromptError(
            "'until the app quits' needs a rule naming the app, and "
            + ("'any app' names none" if anyone else "no app is known for this connection")
            + ": choose a time, or forever"
        )
    pinned = proc.exe is not None and (pin_root or proc.user_writable) and not anyone
    return Rule(
        action=answer.action,
        exe=None if anyone else proc.exe,
        sha256=proc.sha256 if pinned else None,
        script=script,
        parent1=parent1,
        user=None if admin else proc.uid,
        dst=dst,
        host=rule_host,
        ports=ports,
        proto=proto,
        lifetime=lifetime,
        minutes=minutes,
        pid=proc.pid if per_process else None,
        start=proc.start_time if per_process else None,
    )


def _container_rule(
    flow: Flow, proc: Process, host: str | None, answer: Answer, *, admin: bool
) -> Rule:
    """A container's flow (issue 16): the rule names the container (its exact name) and its
    runtime, never the executable, which is the container's file; `container` covers anything
    it does, the destination scopes what they cover for an app. A non-admin's rule names the
    container's owner (`user=`), as an app's names its user."""
    box = proc.container
    if box is None:
        raise PromptError("scope 'container' needs a flow from a container, and this is not one")
    if answer.scope in (Scope.APP, Scope.SCRIPT, Scope.PARENT):
        raise PromptError(
            f"scope {answer.scope.value!r} names an app, and a container's processes are "
            "named by their container: answer for this container, or a destination"
        )
    lifetime, minutes = answer.lifetime
    if lifetime is Lifetime.PROCESS:
        raise PromptError("'until the app quits' needs an app: choose a time, or forever")
    if answer.scope is Scope.CONTAINER:
        rule = Rule(answer.action, lifetime=lifetime, minutes=minutes)
    else:
        rule = _covered(flow, Process(proc.attribution), host, answer, admin=True)
    return replace(
        rule,
        container=_literal(box.name),
        runtime=box.runtime,
        user=None if admin else proc.owner_uid,
    )


def _literal(name: str) -> str:
    """A name as a `container=` glob that matches it alone (`*`, `?`, `[` put in brackets)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _check_identity(proc: Process, answer: Answer) -> None:
    if answer.lifetime[0] is Lifetime.ONCE or proc.exe is None:
        return
    if not proc.verified:
        raise PromptError(
            f"cannot make a rule for {proc.exe}: the executable is unverified (no file at that "
            "path here is the one it runs); answer once, or write a rule without app="
        )
    if proc.tampered and answer.action is Action.ALLOW:
        raise PromptError(
            f"cannot make an allow rule for {proc.exe}: it runs code not of its executable "
            f"({', '.join(n for n in proc.notes() if n.startswith(('preloaded', 'traced')))}) "
            "and its app's allow rules do not match it; answer once"
        )


def _no_script(proc: Process) -> str:
    if not proc.interpreted:
        return f"{proc.exe or 'this process'} is not an interpreter"
    if proc.script is None:
        return "this is inline code"
    return "this script cannot be trusted (" + ", ".join(proc.script_doubts) + ")"
