"""The scopes issue 15 adds (any app to this destination, this app to this network), and host
answers that name only what the asking process itself resolved."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address, ip_network

import pytest

from snitch_common.answers import (
    APP_SCOPES,
    Action,
    Answer,
    Scope,
    parse_answer,
    rule_for_answer,
)
from snitch_common.bus import PromptView
from snitch_common.errors import PromptError
from snitch_common.records import Attribution, Flow, Process, Proto
from snitch_common.rules import parse_rule
from snitchctl.termagent import parse_reply, render
from snitchd.dnssnoop import Resolution
from snitchd.names import SHARED, NameCache, Owner
from snitchd.prompts import Broker
from tests.support.broker import RuleKeeper, SentPrompts

PYTHON = "/usr/bin/python3.11"


def proc(**changes: object) -> Process:
    base = {"pid": 42, "uid": 1000, "exe": "/usr/bin/ssh", "sha256": "ab" * 32}
    return Process(Attribution.PROCESS, **(base | changes))  # type: ignore[arg-type]


def flow(dst: str = "203.0.113.8", dport: int = 22, proto: Proto = Proto.TCP) -> Flow:
    src = "2001:db8:1::1" if ":" in dst else "192.0.2.1"
    return Flow(proto, ip_address(src), 40000, ip_address(dst), dport, "eth0")


def rule(scope: Scope, host: str | None = None, p: Process | None = None, **kw: object) -> str:
    answer = Answer(1, Action.ALLOW, "forever", scope)
    return str(rule_for_answer(flow(**kw), p or proc(), host, answer, admin=False))  # type: ignore[arg-type]


def test_any_app_to_this_destination_names_no_app() -> None:
    assert rule(Scope.ANY_APP) == "allow user=1000 to=203.0.113.8 port=22 proto=tcp"
    assert rule(Scope.ANY_APP, "api.example.org") == (
        "allow user=1000 to=api.example.org port=22 proto=tcp"
    )
    # It names no file, so it is open to an executable whose path could not be verified.
    assert rule(Scope.ANY_APP, p=proc(verified=False)).startswith("allow user=1000 to=")
    with pytest.raises(PromptError, match="unverified"):
        rule(Scope.EXACT, p=proc(verified=False))


def test_an_answer_for_another_protocol_names_it_and_never_covers_tcp() -> None:
    """An IGMP report of the kernel (no process), or a GRE or UDP-Lite flow of an app: the rule
    names proto=other, so "allow this" for it lets out no TCP or UDP to that address."""
    kernel = Process(Attribution.KERNEL)
    answer = Answer(1, Action.ALLOW, "forever", Scope.ANY_APP)
    igmp = flow("224.0.0.22", 0, Proto.OTHER)
    assert str(rule_for_answer(igmp, kernel, None, answer, admin=True)) == (
        "allow to=224.0.0.22 proto=other"
    )
    assert rule(Scope.EXACT, dport=5000, proto=Proto.OTHER) == (
        f"allow app=/usr/bin/ssh sha256={'ab' * 32} user=1000 to=203.0.113.8 proto=other"
    )


@pytest.mark.parametrize(
    "nobody", [Process(Attribution.KERNEL), Process(Attribution.UID_ONLY, uid=1000)]
)
def test_a_flow_of_no_known_app_is_answered_for_its_destination_only(nobody: Process) -> None:
    """The kernel's packets and senders not found have no executable: a scope that widens from
    the app's point of view would make a rule naming no app, so holding for every app ("anything
    this app connects to" made a bare `allow` for an admin, `allow user=1000` for a user)."""
    tcp = flow("203.0.113.8", 443)
    for scope in APP_SCOPES:
        for admin in (True, False):
            with pytest.raises(PromptError, match="no app is known"):
                rule_for_answer(tcp, nobody, None, Answer(1, Action.DENY, "5m", scope), admin=admin)
    mine = "" if nobody.uid is None else "user=1000 "
    for scope in (Scope.EXACT, Scope.ANY_APP):
        made = rule_for_answer(
            tcp, nobody, None, Answer(1, Action.ALLOW, "forever", scope), admin=False
        )
        assert str(made) == f"allow {mine}to=203.0.113.8 port=443 proto=tcp"


def test_this_app_to_this_network_is_a_slash_24_or_a_slash_64() -> None:
    sha = "ab" * 32
    assert rule(Scope.NETWORK, "api.example.org") == (
        f"allow app=/usr/bin/ssh sha256={sha} user=1000 to=203.0.113.0/24"
    )
    assert rule(Scope.NETWORK, dst="2001:db8:1::2") == (
        f"allow app=/usr/bin/ssh sha256={sha} user=1000 to=2001:db8:1::/64"
    )


def test_this_script_and_this_port_keep_their_meaning() -> None:
    script = proc(exe=PYTHON, interpreted=True, script="/home/a/sync.py")
    assert "script=/home/a/sync.py" in rule(Scope.SCRIPT, p=script)
    assert "script=" not in rule(Scope.ANY_APP, p=script)
    assert rule(Scope.PORT).endswith("user=1000 port=22 proto=tcp")


def test_the_terminal_agent_takes_the_new_words() -> None:
    assert parse_reply(3, "a forever anyapp").scope is Scope.ANY_APP
    assert parse_reply(3, "d network").scope is Scope.NETWORK
    assert parse_answer(3, "allow", "once", "network").scope is Scope.NETWORK


def test_each_new_rule_matches_the_flow_it_answers() -> None:
    for scope in (Scope.ANY_APP, Scope.NETWORK):
        for dst in ("203.0.113.8", "2001:db8:1::2"):
            text = rule(scope, dst=dst)
            made = parse_rule(text)
            assert made.dst is None or ip_address(dst) in ip_network(made.dst)


@pytest.mark.parametrize(
    ("named", "expected"), [(None, "to=203.0.113.8"), ("ssh.example.org", "to=ssh.example.org")]
)
async def test_a_host_answer_names_only_what_this_process_resolved(
    named: str | None, expected: str
) -> None:
    """Issue 15: ssh to 203.0.113.8 is shown as www.example.org (wget's name, or a shared
    one): "forever, this host" stores the address; a name ssh resolved itself is stored."""
    broker = Broker(lambda: 0.0, 30, 8, is_admin=lambda uid: False)
    fw = RuleKeeper()
    broker.attach(fw)  # type: ignore[arg-type]
    broker.transport = SentPrompts()
    broker.register(":1.5", "/a", 1000)
    broker.ask("pkt", flow(), proc(), 0.0, "www.example.org", named)  # type: ignore[arg-type]
    (prompt_id,) = broker.open
    await broker.answer(Answer(prompt_id, Action.ALLOW, "forever", Scope.HOST), ":1.5")
    assert fw.rules[0].endswith(f"user=1000 {expected}")
    assert "www.example.org" not in fw.rules[0]


def test_own_names_are_the_ones_this_very_process_resolved() -> None:
    cache = NameCache()
    addr = ip_address("203.0.113.8")
    cache.learn([Resolution(("www.example.org",), addr, 300)], 0.0, Owner(1000, 7))  # wget
    cache.learn([Resolution(("shared.example.org",), addr, 300)], 0.0, SHARED)
    cache.learn([Resolution(("mine.example.org",), addr, 300)], 0.0, Owner(1000))
    ssh = proc(pid=42)
    assert cache.names(addr, 1.0, ssh) == {"shared.example.org", "mine.example.org"}
    assert cache.own(addr, 1.0, ssh) is None
    assert cache.own(addr, 1.0, proc(pid=7)) == "www.example.org"
    assert cache.own(addr, 1.0, Process.uid_only(1000)) is None
    cache.learn(
        [Resolution(("ssh.example.org", "cdn.example.net"), addr, 300)], 2.0, Owner(1000, 42)
    )
    assert cache.own(addr, 3.0, ssh) == "ssh.example.org"
    assert cache.own(addr, 1000.0, ssh) is None  # expired (TTL 300 + grace 60)


def test_the_terminal_agent_says_whose_name_it_shows() -> None:
    prompt = PromptView(
        id=1, exe="/usr/bin/ssh", pid=42, uid=1000, user="alice", cmdline=("ssh",), parents=(),
        sha256=None, proto="tcp", dst="203.0.113.8", port=22, iface="", host="www.example.org",
        deadline=0.0, default_action="deny",
    )  # fmt: skip
    text = render(prompt, 0, 0.0)
    assert "www.example.org was looked up by another program: answers name 203.0.113.8" in text
    assert "anyapp" in text and "network" in text  # the help line offers the new scopes
    own = render(replace(prompt, rule_host="www.example.org"), 0, 0.0)
    assert "another program" not in own


def test_the_terminal_agent_warns_of_a_script_it_cannot_trust() -> None:
    """The note was hidden with the script's own name: the person saw `script` and no doubt."""
    prompt = PromptView(
        id=1, exe="/usr/bin/python3.11", pid=42, uid=1000, user="alice", cmdline=("python3",),
        parents=(), sha256=None, proto="tcp", dst="203.0.113.8", port=443, iface="", host=None,
        deadline=0.0, default_action="deny", script="/home/alice/sync.py",
        notes=("script /home/alice/sync.py", "script not trusted: PYTHONPATH set"),
    )  # fmt: skip
    lines = render(prompt, 0, 0.0).splitlines()
    assert "  WARNING   script not trusted: PYTHONPATH set" in lines
    assert not any(line.startswith("  WARNING   script /") for line in lines)
