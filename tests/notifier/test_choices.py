"""The answer words and scope labels, pinned to what snitchd itself accepts and builds.

The notifier does not import `snitchd.prompts` at run time (it pulls in NetfilterQueue), so
these tests are what keeps the two lists the same.
"""

from __future__ import annotations

import ipaddress

import pytest

from snitch_notifier.choices import (
    DEFAULT_DURATION,
    DEFAULT_SCOPE,
    DURATIONS,
    Action,
    Answer,
    domain_of,
    scope_options,
)
from snitchd import termagent
from snitchd.prompts import Agent, Prompt, Scope, parse_answer, rule_for_answer
from snitchd.records import Attribution, Flow, Process, Proto


def test_every_word_is_one_snitchd_accepts() -> None:
    for action in Action:
        for duration, _ in DURATIONS:
            for scope in Scope:
                parse_answer(action.value, duration, scope.value)


def test_the_lists_match_the_terminal_agent() -> None:
    """`snitchctl agent` and the popup offer the same choices with the same defaults."""
    assert tuple(d for d, _ in DURATIONS) == termagent.DURATIONS
    assert termagent.parse_reply("a") == ("allow", DEFAULT_DURATION, DEFAULT_SCOPE)
    assert Answer(1, Action.ALLOW) == Answer(1, Action.ALLOW, "forever", "exact")


@pytest.mark.parametrize(
    "host", ["example.org", "updates.example.org", "a.b.example.co.uk", "localhost.lan"]
)
def test_the_domain_label_is_the_domain_snitchd_makes(host: str) -> None:
    flow = Flow(
        Proto.TCP,
        ipaddress.ip_address("192.0.2.1"),
        40000,
        ipaddress.ip_address("203.0.113.7"),
        443,
    )
    proc = Process(Attribution.PROCESS, pid=1, uid=1000, exe="/usr/bin/curl")
    prompt = Prompt(1, (), flow, proc, 0.0, 30.0, host=host)
    agent = Agent(":1.1", "/a", 1000, admin=False)
    rule = rule_for_answer(prompt, parse_answer("allow", "forever", "domain"), agent)
    assert rule.host == domain_of(host)


def test_scope_labels_name_this_prompts_host_and_port(prompt_factory) -> None:
    options = scope_options(prompt_factory(), "Firefox")
    assert [o.scope for o in options] == [s.value for s in Scope]
    assert [o.label for o in options] == [
        "only updates.example.org on port 443/tcp",
        "updates.example.org, any port",
        "any host in *.example.org",
        "any host on port 443/tcp",
        "anything Firefox connects to",
    ]
    assert all(o.why_not is None for o in options)


def test_scopes_snitchd_would_refuse_say_why(prompt_factory) -> None:
    options = {o.scope: o for o in scope_options(prompt_factory(host=None, proto="icmp"), "x")}
    assert options["domain"].why_not == "no host name is known for this address"
    assert options["port"].why_not == "icmp has no ports"
    assert options["exact"].label == "only 203.0.113.7"
