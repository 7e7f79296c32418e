"""The popup's scope list: every scope of the shared vocabulary, labelled for this prompt, with
the reason snitchd would refuse the ones that do not fit it."""

from __future__ import annotations

from snitch_common.answers import Scope
from snitch_notifier.choices import scope_options


def test_scope_labels_name_this_prompts_host_and_port(prompt_factory) -> None:
    options = scope_options(prompt_factory(), "Firefox")
    assert [o.scope for o in options] == list(Scope)
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
    assert options[Scope.DOMAIN].why_not == "no host name is known for this address"
    assert options[Scope.PORT].why_not == "icmp has no ports"
    assert options[Scope.EXACT].label == "only 203.0.113.7"
