"""The popup's scope list: every scope of the shared vocabulary, labelled for this prompt, with
the reason snitchd would refuse the ones that do not fit it."""

from __future__ import annotations

from snitch_common.answers import Scope
from snitch_common.choices import scope_options


def test_scope_labels_name_this_prompts_host_and_port(prompt_factory) -> None:
    options = scope_options(prompt_factory(), "Firefox")
    assert [o.scope for o in options] == list(Scope)
    assert [o.label for o in options] == [
        "only updates.example.org on port 443/tcp",
        "updates.example.org, any port or protocol",
        "any host in *.example.org",
        "any host on port 443/tcp",
        "anything Firefox connects to",
        "this script",
        "anything Firefox connects to when started by bash",
        "any app to updates.example.org on port 443/tcp",
        "anything Firefox connects to in 203.0.113.0/24",
        "this container",
    ]
    assert [o.why_not for o in options] == [None] * 5 + ["python3.11 runs no script"] + [
        None
    ] * 3 + ["this connection is not from a container"]


def test_a_containers_prompt_offers_this_container(prompt_factory) -> None:
    """Issue 16: a flow forwarded from a container can be answered for the whole container."""
    prompt = prompt_factory(container="container web-1 (docker)", container_name="web-1")
    option = {o.scope: o for o in scope_options(prompt, "nginx")}[Scope.CONTAINER]
    assert (option.label, option.why_not) == ("anything container web-1 connects to", None)


def test_an_interpreters_prompt_offers_this_script_and_this_parent(prompt_factory) -> None:
    """Issue 14: "this script" rather than every script of the interpreter, and "this app when
    started by X"; a parent not verified, or inline code, cannot be named."""
    prompt = prompt_factory(script="/home/alice/sync.py")
    options = {o.scope: o for o in scope_options(prompt, "Python")}
    assert options[Scope.APP].label == "anything Python connects to, whatever script it runs"
    assert options[Scope.SCRIPT].label == "anything sync.py connects to"
    assert options[Scope.SCRIPT].why_not is None
    inline = {o.scope: o for o in scope_options(prompt_factory(script="inline code"), "P")}
    assert inline[Scope.SCRIPT].why_not == "inline code has no script to name"
    doubted = prompt_factory(
        script="/x.py", notes=("script /x.py", "script not trusted: PYTHONPATH set")
    )
    assert "PYTHONPATH" in str(
        {o.scope: o for o in scope_options(doubted, "P")}[Scope.SCRIPT].why_not
    )
    unverified = prompt_factory(parents=((5, "?/usr/bin/make"),))
    parent = {o.scope: o for o in scope_options(unverified, "P")}[Scope.PARENT]
    assert parent.why_not == "its parent's executable could not be verified"


def test_scopes_snitchd_would_refuse_say_why(prompt_factory) -> None:
    options = {
        o.scope: o
        for o in scope_options(prompt_factory(host=None, rule_host=None, proto="icmp"), "x")
    }
    assert options[Scope.DOMAIN].why_not == "no host name is known for this address"
    assert options[Scope.PORT].why_not == "icmp has no ports"
    assert options[Scope.EXACT].label == "only 203.0.113.7"
    assert options[Scope.HOST].label == "203.0.113.7, any protocol"  # its rule names none


def test_a_name_another_program_looked_up_is_not_offered(prompt_factory) -> None:
    """Issue 15: `host` came from another program's lookup (`rule_host` None): host answers
    name the address, and no domain is offered."""
    prompt = prompt_factory(host="www.example.org", rule_host=None, dst="203.0.113.8", port=22)
    options = {o.scope: o for o in scope_options(prompt, "ssh")}
    assert options[Scope.EXACT].label == "only 203.0.113.8 on port 22/tcp"
    assert options[Scope.HOST].label == "203.0.113.8, any port or protocol"
    assert options[Scope.DOMAIN].why_not == (
        "www.example.org was looked up by another program, not this one"
    )
    assert "www.example.org" not in " ".join(o.label for o in options.values())
    v6 = {o.scope: o for o in scope_options(prompt_factory(dst="2001:db8:1::2"), "x")}
    assert v6[Scope.NETWORK].label == "anything x connects to in 2001:db8:1::/64"


def test_a_prompt_of_no_known_app_offers_only_its_destination(prompt_factory) -> None:
    """The kernel's IGMP report, or a sender not found: a rule could name no app, so every
    scope that widens from the app's point of view would hold for every app ("anything this
    app connects to" was a bare `allow`); snitchd refuses them, and the popup says why."""
    prompt = prompt_factory(
        exe=None, proto="other", dst="224.0.0.22", port=0, source="kernel", rule_host=None
    )
    options = {o.scope: o for o in scope_options(prompt, "kernel")}
    assert {s for s, o in options.items() if o.why_not is None} == {Scope.EXACT, Scope.ANY_APP}
    assert options[Scope.APP].why_not == (
        "no app is known for this connection: its rule would hold for every app"
    )
    assert options[Scope.PORT].why_not == "other has no ports"  # the first reason stays
    assert options[Scope.EXACT].label == "only 224.0.0.22, from any app"  # as its rule holds
