"""The answer vocabulary: the words every agent offers, and the rule each answer makes."""

from __future__ import annotations

import ipaddress
from ipaddress import ip_address, ip_network

import pytest

from snitch_common.answers import (
    DEFAULT_DURATION,
    DEFAULT_SCOPE,
    DURATIONS,
    Action,
    Answer,
    Scope,
    domain_of,
    parse_answer,
    rule_for_answer,
)
from snitch_common.errors import PromptError
from snitch_common.records import Attribution, Flow, Process, Proto
from snitch_common.rules import Lifetime
from snitchctl.termagent import parse_reply


def proc(uid: int = 1000, exe: str = "/usr/bin/curl", pid: int = 4242) -> Process:
    return Process(Attribution.PROCESS, pid=pid, uid=uid, exe=exe, start_time=100.0)


def flow(dst: str = "203.0.113.7", dport: int = 443, sport: int = 40000) -> Flow:
    return Flow(Proto.TCP, ip_address("192.0.2.1"), sport, ip_address(dst), dport, "eth0")


def test_every_offered_word_parses() -> None:
    for action in Action:
        for duration, _ in DURATIONS:
            for scope in Scope:
                parse_answer(1, action.value, duration, scope.value)


def test_a_non_admins_answer_is_limited_to_their_own_processes() -> None:
    rule = rule_for_answer(flow(), proc(uid=1000), None, Answer(1, Action.ALLOW), admin=False)
    assert rule.user == 1000
    assert rule_for_answer(flow(), proc(), None, Answer(1, Action.ALLOW), admin=True).user is None


@pytest.mark.parametrize(
    "host", ["example.org", "updates.example.org", "a.b.example.co.uk", "localhost.lan"]
)
def test_the_domain_scope_covers_domain_of_the_host(host: str) -> None:
    answer = Answer(1, Action.ALLOW, scope=Scope.DOMAIN)
    rule = rule_for_answer(flow(), proc(), host, answer, admin=False)
    assert rule.host == domain_of(host)
    assert ipaddress.ip_address("203.0.113.7") not in (rule.dst or ip_network("192.0.2.0/24"))


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("a", Answer(7, Action.ALLOW, DEFAULT_DURATION, DEFAULT_SCOPE)),
        ("d forever", Answer(7, Action.DENY, "forever")),
        ("reject 15m host", Answer(7, Action.REJECT, "15m", Scope.HOST)),
        ("A 90m app", Answer(7, Action.ALLOW, "90m", Scope.APP)),
    ],
)
def test_the_terminal_agent_reads_the_same_words(line: str, expected: Answer) -> None:
    assert parse_reply(7, line) == expected


@pytest.mark.parametrize("line", ["", "x", "a soon", "a 0m", "allow host nowhere"])
def test_the_terminal_agent_refuses_other_words(line: str) -> None:
    with pytest.raises(ValueError):
        parse_reply(7, line)


@pytest.mark.parametrize(
    ("scope", "host", "text"),
    [
        (Scope.EXACT, None, "deny app=/usr/bin/curl to=203.0.113.7 port=443 proto=tcp"),
        (Scope.HOST, None, "deny app=/usr/bin/curl to=203.0.113.7"),
        (Scope.HOST, "api.example.org", "deny app=/usr/bin/curl to=api.example.org"),
        (Scope.DOMAIN, "api.example.org", "deny app=/usr/bin/curl to=*.example.org"),
        (Scope.PORT, None, "deny app=/usr/bin/curl port=443 proto=tcp"),
        (Scope.APP, None, "deny app=/usr/bin/curl"),
    ],
)
def test_each_scope_makes_the_rule_it_says(scope: Scope, host: str | None, text: str) -> None:
    rule = rule_for_answer(flow(), proc(), host, Answer(1, Action.DENY, scope=scope), admin=True)
    assert str(rule) == text
    assert rule.dst in (None, ip_network("203.0.113.7/32"))


def test_until_the_process_quits_pins_the_process() -> None:
    answer = Answer(1, Action.ALLOW, "process", Scope.APP)
    rule = rule_for_answer(flow(), proc(pid=77), None, answer, admin=True)
    assert str(rule) == "allow app=/usr/bin/curl for=process pid=77 start=100.0"


@pytest.mark.parametrize(
    ("who", "scope", "why"),
    [
        (proc(), Scope.ANY_APP, "'any app' names none"),
        (Process.kernel(), Scope.EXACT, "no app is known"),
        (Process.uid_only(1000), Scope.EXACT, "no app is known"),
        (Process.uid_only(1000), Scope.ANY_APP, "'any app' names none"),
    ],
)
@pytest.mark.parametrize("admin", [True, False])
def test_until_the_process_quits_needs_a_rule_naming_the_app(
    who: Process, scope: Scope, why: str, admin: bool
) -> None:
    """Before, these made `for=process` rules without `app=`: stored, then refused by the
    store's own parser, so the next start failed (and a kernel's one never ended)."""
    answer = Answer(1, Action.ALLOW, "process", scope)
    with pytest.raises(PromptError, match=why):
        rule_for_answer(flow(), who, None, answer, admin=admin)


def test_domain_scope_needs_a_name() -> None:
    with pytest.raises(PromptError, match="needs a host name"):
        rule_for_answer(
            flow(), proc(), None, Answer(1, Action.ALLOW, scope=Scope.DOMAIN), admin=True
        )


def test_parse_answer_errors_name_the_field() -> None:
    answer = parse_answer(3, "allow", "15m", "host")
    assert answer == Answer(3, Action.ALLOW, "15m", Scope.HOST)
    assert answer.lifetime == (Lifetime.MINUTES, 15)
    with pytest.raises(PromptError, match="action 'permit'"):
        parse_answer(1, "permit", "once", "exact")
    with pytest.raises(PromptError, match="duration"):
        parse_answer(1, "allow", "soon", "exact")
    with pytest.raises(PromptError, match="scope 'everything'"):
        parse_answer(1, "allow", "once", "everything")


# ---------------------------------------------------------------------------------------------
# Who an answer names (issue 14): pinned digests, scripts, parents, unverified executables.

HASH = "c" * 64


def who(**fields: object) -> Process:
    base: dict[str, object] = {"pid": 7, "uid": 1000, "exe": "/usr/bin/curl", "sha256": HASH}
    return Process(Attribution.PROCESS, **{**base, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("user_writable", "pin_root", "pinned"),
    [(False, True, True), (False, False, False), (True, True, True), (True, False, True)],
)
def test_answers_pin_the_digest_of_root_owned_by_default_and_user_writable_always(
    user_writable: bool, pin_root: bool, pinned: bool
) -> None:
    """A rule made by a click must not outlive the program it was made for: an executable the
    user (or malware running as the user) can rewrite is always pinned; a root-owned one unless
    the admin chose `pin_answers = "user-writable"` (its rules then survive package upgrades)."""
    p = who(user_writable=user_writable)
    rule = rule_for_answer(flow(), p, None, Answer(1, Action.ALLOW), admin=False, pin_root=pin_root)
    assert rule.sha256 == (HASH if pinned else None)
    assert rule.exe == "/usr/bin/curl"


def test_an_unknown_digest_makes_an_unpinned_rule() -> None:
    rule = rule_for_answer(flow(), who(sha256=None), None, Answer(1, Action.DENY), admin=False)
    assert rule.sha256 is None


def test_an_interpreters_answer_names_its_script_except_for_the_app_scope() -> None:
    """The identity of `python3 ok.py` includes ok.py: allowing it must not allow every script;
    `app` is the explicit choice of every script, and `script` is anything ok.py does."""
    p = who(exe="/usr/bin/python3.11", interpreted=True, script="/home/u/ok.py")
    exact = rule_for_answer(flow(), p, None, Answer(1, Action.ALLOW), admin=False)
    assert exact.script == "/home/u/ok.py" and exact.ports == (443, 443)
    anything = rule_for_answer(
        flow(), p, None, Answer(1, Action.ALLOW, scope=Scope.APP), admin=True
    )
    assert anything.script is None
    script = rule_for_answer(
        flow(), p, None, Answer(1, Action.ALLOW, scope=Scope.SCRIPT), admin=True
    )
    assert (script.script, script.dst, script.ports, script.proto) == ("/home/u/ok.py",) + (
        None,
    ) * 3


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"interpreted": True, "script": None}, "inline code"),
        ({"interpreted": False}, "not an interpreter"),
        (
            {"interpreted": True, "script": "/x.py", "script_doubts": ("PYTHONPATH set",)},
            "PYTHONPATH",
        ),
    ],
)
def test_the_script_scope_needs_a_script_it_can_trust(fields: dict[str, object], why: str) -> None:
    with pytest.raises(PromptError, match=why):
        rule_for_answer(
            flow(), who(**fields), None, Answer(1, Action.ALLOW, scope=Scope.SCRIPT), admin=True
        )


def test_the_parent_scope_names_the_verified_direct_parent() -> None:
    p = who(parents=((5, "/usr/bin/make"), (1, "/sbin/init")))
    rule = rule_for_answer(flow(), p, None, Answer(1, Action.ALLOW, scope=Scope.PARENT), admin=True)
    assert (rule.parent1, rule.parent, rule.dst, rule.ports) == ("/usr/bin/make", None, None, None)
    for label in ("?/usr/bin/make", "[make]"):
        with pytest.raises(PromptError, match="verified"):
            rule_for_answer(
                flow(), who(parents=((5, label),)), None,
                Answer(1, Action.ALLOW, scope=Scope.PARENT), admin=True,
            )  # fmt: skip


@pytest.mark.parametrize("action", list(Action))
def test_an_unverified_executable_gets_only_once_answers(action: Action) -> None:
    """A rule would name the path it shows, which is another file's here: an answer for the
    impostor would open (or close) the real /usr/bin/curl."""
    p = who(verified=False)
    with pytest.raises(PromptError, match="unverified"):
        rule_for_answer(flow(), p, None, Answer(1, action), admin=True)
    rule_for_answer(flow(), p, None, Answer(1, action, duration="once"), admin=True)


def test_a_tampered_process_gets_no_allow_rule_but_may_be_denied() -> None:
    p = who(preload=("/tmp/evil.so",))
    with pytest.raises(PromptError, match=r"preloaded /tmp/evil\.so"):
        rule_for_answer(flow(), p, None, Answer(1, Action.ALLOW), admin=True)
    assert rule_for_answer(flow(), p, None, Answer(1, Action.DENY), admin=True).exe == p.exe
