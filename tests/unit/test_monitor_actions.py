"""What the Network Monitor does about a destination (issue 19: "allow / deny this from now
on (makes the rule, with the scope choices of the popup)", "the rules that apply to it"):
the rules its choices make, the scopes it greys, and which rules it lists for an app."""

from __future__ import annotations

import pytest

from snitch_common.answers import Action, Scope
from snitch_common.errors import SnitchError
from snitch_common.rules import parse_rule
from snitch_notifier.bridge import RuleRow
from snitch_notifier.monitoractions import (
    RuleChoice,
    applying_rules,
    can_act,
    explain_query,
    monitor_scopes,
    rule_of,
)
from snitch_notifier.traffic import AppKey, HostTraffic

APP = AppKey("/usr/bin/sync", 1000)
NAMED = HostTraffic("api.example.org", "203.0.113.7", 9000, "tcp", 1, 0, 0, 0, 1.0, "allow")
BARE = HostTraffic("198.51.100.9", "198.51.100.9", 53, "udp", 1, 1, 0, 0, 1.0, "deny")
SHA = "ab" * 32


@pytest.mark.parametrize(
    ("host", "scope", "only_user", "text"),
    [
        (NAMED, Scope.EXACT, False, f"deny app=/usr/bin/sync sha256={SHA} to=api.example.org "
         "port=9000 proto=tcp"),
        (NAMED, Scope.DOMAIN, False, f"deny app=/usr/bin/sync sha256={SHA} to=*.example.org"),
        (NAMED, Scope.ANY_APP, True, "deny user=1000 to=api.example.org port=9000 proto=tcp"),
        (BARE, Scope.HOST, True, f"deny app=/usr/bin/sync sha256={SHA} user=1000 to=198.51.100.9"),
        (BARE, Scope.NETWORK, False, f"deny app=/usr/bin/sync sha256={SHA} to=198.51.100.0/24"),
        (BARE, Scope.PORT, False, f"deny app=/usr/bin/sync sha256={SHA} port=53 proto=udp"),
    ],
)  # fmt: skip
def test_a_choice_makes_the_rule_the_popup_would(
    host: HostTraffic, scope: Scope, only_user: bool, text: str
) -> None:
    rule = rule_of(RuleChoice(APP, host, Action.DENY, scope, "forever", only_user), SHA)
    assert rule == parse_rule(text)


def test_a_rule_for_a_while_and_without_a_digest() -> None:
    rule = rule_of(RuleChoice(APP, NAMED, Action.ALLOW, Scope.HOST, "60m"), None)
    assert str(rule).startswith("allow app=/usr/bin/sync to=api.example.org for=60m")


def test_scopes_the_log_cannot_back_are_greyed_with_the_reason() -> None:
    named = {o.scope: o.why_not for o in monitor_scopes(APP, NAMED)}
    bare = {o.scope: o.why_not for o in monitor_scopes(APP, BARE)}
    assert list(named) == list(Scope), "the popup's scopes, in its order"
    assert named[Scope.EXACT] is None and named[Scope.DOMAIN] is None
    assert "does not record the script" in (named[Scope.SCRIPT] or "")
    assert "does not record an app's parents" in (named[Scope.PARENT] or "")
    assert bare[Scope.DOMAIN] == "no host name is known for this address"
    with pytest.raises(SnitchError, match="needs a host name"):
        rule_of(RuleChoice(APP, BARE, Action.DENY, Scope.DOMAIN), None)


def test_no_rule_for_an_app_without_an_executable() -> None:
    """A `uid 1000` row is every process of that user whose owner was not found: a rule with
    `app` scope would name no app, and cover all of them."""
    kernel = AppKey("uid 1000", 1000)
    assert "has no executable" in (can_act(kernel, NAMED) or "")
    with pytest.raises(SnitchError, match="no executable"):
        rule_of(RuleChoice(kernel, NAMED, Action.DENY, Scope.APP), None)


def test_why_asks_as_snitchctl_explain_does() -> None:
    query = {k: v.value for k, v in explain_query(APP, NAMED).items()}
    assert query == {
        "dst": "203.0.113.7",
        "port": 9000,
        "proto": "tcp",
        "exe": "/usr/bin/sync",
        "uid": 1000,
        "host": "api.example.org",
    }
    assert "host" not in explain_query(APP, BARE)


def test_the_rules_listed_for_an_app_name_it_or_any_app_for_its_user_or_any() -> None:
    texts = [
        "allow app=/usr/bin/sync to=api.example.org",  # 1: it
        "deny to=*.example.net",  # 2: any app
        "deny app=/usr/bin/other",  # 3: another app
        "allow user=1000 port=443 proto=tcp",  # 4: its user
        "allow user=1001",  # 5: another user
        "deny container=web-1",  # 6: a container's
        "allow app=/usr/bin/sync user=1001",  # 7: it, run by another user
    ]
    rows = [RuleRow(i + 1, t, 0, None, "uid 0") for i, t in enumerate(texts)]
    rows.append(RuleRow(99, "frobnicate everything", 0, None, "uid 0"))  # a newer snitchd's
    assert [r.id for r in applying_rules(rows, APP)] == [1, 2, 4]
